"""`fl-userdp compare/run` input handling (fast: everything fails before any engine starts)."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fl_userdp.cli import main
from fl_userdp.config import SCHEMA, flatten_toml, parse_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args, needle", [
    (["--set", "privacy.nosie=1"], "privacy.nosie"),
    (["--set", "privacy.sampling-rate=1.5"], "privacy.sampling-rate must be in [1e-07, 1], got 1.5"),
    (["--set", "model.name=/no/such/model"], "model.name"),
    (["--set", "privacy.max-examples-per-user=0"], "privacy.max-examples-per-user must be >= 1, got 0"),
    (["--set", "data.num-users=0"], "data.num-users"),
    (["--set", "justakey"], "--set"),
    (["--rounds", "0"], "train.rounds"),
    (["--config", "/no/such.toml"], "--config"),
])
def test_bad_input_exits_2_with_one_line(capsys, args, needle, tmp_path):
    assert main(["compare", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_mode_is_an_argparse_error():
    out = subprocess.run([sys.executable, "-m", "fl_userdp", "run", "--mode", "xls"], capture_output=True, text=True)
    assert out.returncode == 2 and "xls" in out.stderr and "Traceback" not in out.stderr


def test_config_file_and_overrides(tmp_path):
    from fl_userdp.cli.sim import config_from_args
    from argparse import Namespace

    f = tmp_path / "c.toml"
    f.write_text('seed = 3\n[privacy]\nmode = "els"\nclip-norm = 0.5\n[train]\nrounds = 7\n')
    a = Namespace(config=str(f), set=["privacy.clip-norm=0.25"], rounds=2, out=None, seed=None, ray_address="auto")
    cfg = config_from_args(a)
    assert (cfg.seed, cfg.privacy.mode, cfg.privacy.clip_norm, cfg.train.rounds, cfg.sim.ray_address) == \
        (3, "els", 0.25, 2, "auto")


def test_flwr_run_config_is_the_schema():
    """[tool.flwr.app.config] holds every schema key (nested tables = dotted keys) and parses to the defaults."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    app = data["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fl_userdp.server.app:app", "clientapp": "fl_userdp.clients.app:app"}
    flat = flatten_toml(app["config"])
    assert set(flat) == set(SCHEMA)
    assert parse_config(flat) == parse_config({})


def test_failure_policy_stop_exits_4_and_resumes(tmp_path, capsys, monkeypatch):
    from fl_userdp.server import inprocess

    args = ["run", "--mode", "uls", "--backend", "inprocess", "--no-progress", "--rounds", "6", "--out",
            str(tmp_path), "--set", "model.name=linear", "--set", "data.num-users=40", "--set",
            "sim.users-per-node=5", "--set", "privacy.sampling-rate=0.5", "--set", "sim.max-failed-rounds=2"]
    honest = inprocess.InProcessTransport.__call__
    monkeypatch.setattr(inprocess.InProcessTransport, "__call__", lambda self, reqs, w: {})  # every node silent
    assert main(args) == 4
    err = capsys.readouterr().err
    assert "node failures" in err and "stopped after round 2" in err and "--resume" in err
    monkeypatch.setattr(inprocess.InProcessTransport, "__call__", honest)
    assert main([*args, "--resume"]) == 0


def test_cuda_device_without_cuda_is_refused_with_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["run", "--backend", "inprocess", "--rounds", "1", "--out", str(tmp_path), "--no-progress",
                 "--set", "model.device=cuda", "--set", "data.num-users=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.device" in err and "'cuda'" in err and "Traceback" not in err


def test_a_folder_holds_one_accounting(tmp_path, capsys):
    """`run --mode uls` then `run --mode els` into one folder: the second is refused (its summary would report
    ELS alone beside the ULS releases of the same users); resuming one mode of a two-mode folder is refused
    too; a compare there resumes both and states the all-modes ε."""
    base = ["--backend", "inprocess", "--rounds", "1", "--out", str(tmp_path), "--no-progress",
            "--set", "model.name=linear", "--set", "data.num-users=40", "--set", "sim.users-per-node=20",
            "--set", "privacy.noise-multiplier=1", "--set", "train.eval-every=0"]
    assert main(["run", "--mode", "uls", *base]) == 0
    capsys.readouterr()
    assert main(["run", "--mode", "els", *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "released uls rounds" in err[0] and "one accounting" in err[0]
    assert main(["compare", *base]) == 2                         # a fresh compare over it: refused as well
    capsys.readouterr()
    both = tmp_path / "both"
    args = [a if a != str(tmp_path) else str(both) for a in base]
    assert main(["compare", *args]) == 0
    capsys.readouterr()
    assert main(["run", "--mode", "uls", "--resume", *[a if a != "1" else "2" for a in args]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "also holds ELS releases" in err[0]
    assert main(["compare", "--resume", *[a if a != "1" else "2" for a in args]]) == 0
    assert "all modes together" in capsys.readouterr().err
