"""`fl-userdp epsilon` / `calibrate`: the contract and bad input."""
import json
import subprocess
import sys

import pytest

BASE = ["--sampling-rate", "0.01", "--steps", "1000", "--delta", "1e-6"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fl_userdp", *args], capture_output=True, text=True, timeout=300)


def test_epsilon_json_contract():
    out = cli("epsilon", "--mode", "els", *BASE, "--noise-multiplier", "1", "--max-examples-per-user", "8", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"epsilon", "delta", "mode", "accountant"} <= set(data)
    assert data["mode"] == "els" and data["accountant"] == "pld" and data["delta"] == 1e-6
    assert 23.05 < data["epsilon"] < 23.2


def test_epsilon_infinite_prints_inf_and_json_null():
    out = cli("epsilon", "--mode", "uls", *BASE, "--noise-multiplier", "0")
    assert out.returncode == 0 and out.stdout.strip() == "inf"
    data = json.loads(cli("epsilon", "--mode", "uls", *BASE, "--noise-multiplier", "0", "--json").stdout)
    assert data["epsilon"] is None and data["epsilon_infinite"] is True


def test_calibrate_json_contract():
    out = cli("calibrate", "--mode", "uls", "--target-epsilon", "2", *BASE, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["epsilon"] <= 2.0 and data["noise_multiplier"] > 0


@pytest.mark.parametrize("args,needle", [
    (["epsilon", "--mode", "uls", "--sampling-rate", "1.5", "--steps", "10", "--delta", "1e-6", "--noise-multiplier", "1"], "1.5"),
    (["epsilon", "--mode", "uls", "--sampling-rate", "0", "--steps", "10", "--delta", "1e-6", "--noise-multiplier", "1"], "sampling-rate"),
    (["epsilon", "--mode", "uls", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-6", "--noise-multiplier", "-1"], "noise-multiplier"),
    (["epsilon", "--mode", "uls", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1", "--noise-multiplier", "1"], "--delta"),
    (["epsilon", "--mode", "uls", "--sampling-rate", "0.1", "--steps", "-1", "--delta", "1e-6", "--noise-multiplier", "1"], "--steps"),
    (["epsilon", "--mode", "els", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-6", "--noise-multiplier", "1", "--max-examples-per-user", "0"], "max-examples-per-user"),
    (["epsilon", "--mode", "els", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-6", "--noise-multiplier", "1"], "max-examples-per-user"),
    (["epsilon", "--mode", "xls", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-6", "--noise-multiplier", "1"], "xls"),
    (["epsilon", "--mode", "els", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-6", "--noise-multiplier", "1", "--max-examples-per-user", "4", "--accountant", "rdp"], "rdp"),
    (["epsilon", "--mode", "uls", "--sampling-rate", "abc", "--steps", "10", "--delta", "1e-6", "--noise-multiplier", "1"], "abc"),
    (["calibrate", "--mode", "uls", "--target-epsilon", "-1", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-6"], "target-epsilon"),
])
def test_bad_input_exits_2_with_one_line(args, needle):
    out = cli(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0] and "Traceback" not in out.stderr


def test_epsilon_rdp_prints_the_number_and_no_absl_warnings():
    """dp_accounting leaves out RDP orders whose series does not converge and logs an absl WARNING for each (eight
    at q = 0.5): the command prints its number and nothing else."""
    out = cli("epsilon", "--mode", "uls", "--sampling-rate", "0.5", "--steps", "3", "--delta", "1e-5",
              "--noise-multiplier", "1", "--accountant", "rdp")
    assert out.returncode == 0 and out.stderr == "" and "absl" not in out.stdout
    assert 6.4 < float(out.stdout) < 6.6
