"""Every benchmark and study script the docs name runs, at its smallest setting, so none breaks unnoticed.

* `SMOKE` holds, for each script named in README.md, experiments/README.md or docs/, how it is exercised here
  (or which test file runs it); a test fails when the docs name a script that has none.
* Each named Python script answers `--help` (it imports and builds its parser) — in this process, so the
  imports are shared and each takes a fraction of a second.
* The cheap ones also do real work at their smallest setting (seconds): the population benchmark's plain-loop
  references against the node's grid sums and its measuring transport, the accounting benchmark on one row,
  the mean-estimation and linear-node benchmarks at a few users.
* The ones that need Ray, Flower's `flwr run`, a model download or another environment are run end to end
  only with `pytest --run-bench` (marked `bench`), at their smallest setting.
"""
from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "experiments" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# script -> how it is exercised: "here" (this file), or the test file that runs it at its smallest setting
SMOKE = {
    "experiments/audit_table.py": "here",
    "experiments/bench_accounting.py": "here",
    "experiments/bench_bandmf.py": "tests/test_bench_bandmf.py",
    "experiments/bench_gpu.py": "tests/local/test_devices.py",
    "experiments/bench_linear_node.py": "here",
    "experiments/bench_mean_estimation.py": "here",
    "experiments/bench_population.py": "here",
    "experiments/bench_scaleout.py": "here",
    "experiments/bench_simulation_overhead.py": "here",
    "experiments/bench_smollm2.py": "here",
    "experiments/crossover/report.py": "tests/test_crossover_report.py",
    "experiments/crossover/run.py": "here",
    "experiments/custom_task/sweep.py": "here",
    "experiments/custom_task/tabular.py": "tests/server/test_custom_task.py",
    "experiments/dropin/compare_accountants.py": "tests/server/test_dropin.py",
    "experiments/dropin/epsilon_check.py": "here",
    "experiments/gpu/run.sh": "here",
    "experiments/llm/report.py": "here",
    "experiments/llm/run.py": "here",
    "experiments/llm/tune.py": "here",
    "experiments/lm_regime/report.py": "here",
    "experiments/lm_regime/run.py": "here",
    "experiments/mean_estimation/plot.py": "here",
    "experiments/mean_estimation/run.py": "here",
    "experiments/mutation/run.py": "here",
    "experiments/pfl_linear.py": "here",
    "experiments/compute/run.py": "here",
    "experiments/compute/report.py": "tests/test_compute_study.py",
    "experiments/compute/heldout_corpus.py": "tests/test_heldout_corpus.py",
    "experiments/bandmf/utility.py": "tests/test_bandmf_study.py",
    "experiments/bandmf/pfl_side_by_side.py": "tests/test_bandmf_study.py",
    "experiments/crossover/advise_again.py": "here",
}
HELP = sorted(s for s, how in SMOKE.items() if how == "here" and s.endswith(".py"))


def named_scripts() -> set[str]:
    found: set[str] = set()
    for doc in DOCUMENTS:
        text = doc.read_text(encoding="utf-8")
        found |= set(re.findall(r"experiments/[\w/]+\.(?:py|sh)", text))
        found |= {m.replace(".", "/") + ".py" for m in re.findall(r"python -m (experiments\.[\w.]+)", text)}
    return {s for s in found if (ROOT / s).is_file()}


def test_every_script_the_docs_name_has_a_smoke_test():
    missing = sorted(named_scripts() - set(SMOKE))
    assert not missing, f"named in the docs without a smoke test (add one to SMOKE): {missing}"
    for script, how in SMOKE.items():
        assert (ROOT / script).is_file(), script
        if how != "here":
            assert script in (ROOT / how).read_text() or Path(script).stem in (ROOT / how).read_text(), (script, how)


@pytest.fixture
def script_env(monkeypatch):
    """Run experiment scripts in this process: their folder on sys.path, their modules forgotten before (another
    test may have imported a study's `run` or `report` by that bare name) and after."""
    for name in [n for n in sys.modules if "." not in n]:
        if str(ROOT / "experiments") in str(getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]
    before = set(sys.modules)
    yield monkeypatch
    for name in set(sys.modules) - before:
        if str(ROOT / "experiments") in str(getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]


def run_script(monkeypatch, script: str, *argv: str) -> int:
    path = ROOT / script
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.syspath_prepend(str(ROOT))
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def load(monkeypatch, script: str):
    path = ROOT / script
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.syspath_prepend(str(ROOT))
    return runpy.run_path(str(path), run_name=f"smoke_{path.stem}")


@pytest.mark.parametrize("script", HELP)
def test_the_script_imports_and_answers_help(script, script_env, capsys):
    assert run_script(script_env, script, "--help") == 0
    assert "usage:" in capsys.readouterr().out


def test_the_gpu_script_is_valid_shell():
    assert subprocess.run(["bash", "-n", str(ROOT / "experiments" / "gpu" / "run.sh")]).returncode == 0


# -- the population benchmark (experiments/README's pfl-research command died in both places below) ---------
def test_bench_population_references_agree_with_the_grid_sums_within_its_resolution(script_env):
    bp = load(script_env, "experiments/bench_population.py")
    cfg = bp["config"](300, 1, 2, "unused", cohort=100)
    rates = bp["run_plain"](cfg, bp["cohorts"](cfg, 2))  # asserts every sum within sum_tolerance
    assert set(rates) == {"torch", "numpy", "numpy_lazy", "vec", "vec_lazy"} and min(rates.values()) > 0
    from fl_userdp.mechanism.fixed_point import grid_unit

    assert bp["sum_tolerance"](1000, 1.0) == pytest.approx(1000 * grid_unit(1.0), rel=1e-2)
    assert bp["sum_tolerance"](1000, 1.0) < 1e-6  # the grid's resolution, not a loose bound


def test_bench_population_measuring_transport_takes_the_transport_s_parse_signature(script_env):
    from fl_userdp.server.app import GridTransport

    bp = load(script_env, "experiments/bench_population.py")
    Measured = bp["measured_transport"](GridTransport)

    class Reply:  # what GridTransport._parse reads of a Flower reply
        def __init__(self, error: bool):
            self.error = type("E", (), {"code": 1, "reason": "boom"})()
            self._error = error
            self.content = {"metrics": {"seconds": 0.25, "max-rss-mb": 42.0}, "update": None}

        def has_error(self):
            return self._error

    transport = object.__new__(Measured)  # as the transport calls it: self._parse(rep, shapes)
    failed = transport._parse(Reply(True), [(2,)])
    malformed = transport._parse(Reply(False), [(2,)])
    assert type(failed).__name__ == type(malformed).__name__ == "NodeFailure"
    assert Measured.node_seconds == [0.25] and Measured.node_rss == 42.0


# -- the other cheap benchmarks, at their smallest setting ----------------------------------------------------
def test_bench_accounting_one_row(script_env, capsys):
    bench = load(script_env, "experiments/bench_accounting.py")
    bench["QUICK"][:] = [("uls", 0.01, 1.0, None, 10)]  # the library's side of an ELS row takes a minute
    script_env.setattr(sys, "argv", ["bench_accounting.py", "--quick"])
    bench["main"]()
    out = capsys.readouterr().out
    assert re.search(r"^uls\s+0\.01\s+1\s+-\s+10 \|", out, re.M), out


def test_bench_mean_estimation_smallest(script_env, capsys):
    rc = run_script(script_env, "experiments/bench_mean_estimation.py", "--users", "500", "--dim", "4",
                    "--steps", "5", "--k", "2", "--user-rate", "0.1")
    out = capsys.readouterr().out
    assert rc == 0 and "uls: q=" in out and "els: q=" in out and "slowest configuration" in out, out


def test_bench_linear_node_smallest(script_env, capsys):
    assert run_script(script_env, "experiments/bench_linear_node.py", "--users", "200", "--reps", "4") == 0
    assert capsys.readouterr().out.strip()


# -- end to end through Ray / flwr run (pytest --run-bench) ---------------------------------------------------
@pytest.mark.bench
def test_bench_population_end_to_end_smallest(tmp_path):
    out = subprocess.run([sys.executable, "experiments/bench_population.py", "--populations", "200", "--rounds", "3",
                          "--warmup", "1", "--nodes", "1", "--plain-rounds", "1", "--stock-users", ""],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ours, Flower, 200 users" in out.stdout


@pytest.mark.bench
def test_bench_scaleout_end_to_end_smallest():
    out = subprocess.run([sys.executable, "experiments/bench_scaleout.py", "--nodes", "2", "--modes", "uls",
                          "--rounds", "3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
