"""The correlated-noise study scripts: the utility table's tests computed from its rows (paired by seed, Holm
over the 12), and the pfl-research side by side's error of a dense C against the closed form (the comparison
itself needs pfl's own environment: `pytest --run-bench`)."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def utility(monkeypatch):
    for path in (ROOT, ROOT / "experiments" / "compute", ROOT / "experiments" / "bandmf"):
        monkeypatch.syspath_prepend(str(path))
    for name in ("run", "report"):
        sys.modules.pop(name, None)
    yield runpy.run_path(str(ROOT / "experiments" / "bandmf" / "utility.py"), run_name="smoke_utility")
    for name in ("run", "report"):
        sys.modules.pop(name, None)


def test_the_utility_table_pairs_seeds_and_corrects_over_the_twelve(utility, tmp_path):
    rows, rng = [], np.random.default_rng(0)
    for mode in ("uls", "els"):
        for eps in (1.0, 8.0):
            for t in (69, 690):
                for mech, shift in (("independent", 0.0), ("bandmf4", 0.0), ("bandmf16", -0.05), ("bandmf64", 0.0)):
                    for seed in range(5):
                        loss = 2.0 + 0.01 * seed + shift + 1e-4 * rng.standard_normal()
                        rows.append({"key": f"report|shakespeare-600|{mode}|eps{eps:g}|T{t}|{mech}|seed{seed}",
                                     "eval_loss": loss, "epochs": 1.0, "sigma": 1.0, "q": 0.1,
                                     "config": {"train.server-lr": 0.003}})
    path = tmp_path / "utility.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = utility["table"](path, write=False)
    lines = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ULS ε") or
             ln.startswith("| ELS ε")}
    assert len(lines) == 12
    assert "-0.0500" in lines["ULS ε 1 b 16"] and "decided: BandMF better" in lines["ULS ε 1 b 16"]
    assert "not decided" in lines["ELS ε 8 b 4"]       # a seed-by-seed offset alone cancels in the pairs


def test_the_side_by_side_error_of_a_dense_c_is_the_closed_form(monkeypatch):
    from fl_userdp.mechanism.bandmf import coefficients, error_ratio, strategy_matrix
    monkeypatch.syspath_prepend(str(ROOT))
    mod = runpy.run_path(str(ROOT / "experiments" / "bandmf" / "pfl_side_by_side.py"), run_name="smoke_pfl")
    for b in (1, 4, 16):
        c = coefficients("sqrt", b)
        assert mod["error_of"](strategy_matrix(c, 60)) == pytest.approx(error_ratio(c, 60), rel=1e-9)
    # a C whose rows have norm 1 but whose columns do not is charged its largest column norm
    lower = np.linalg.cholesky(np.eye(3) + 0.5 * (np.eye(3, k=1) + np.eye(3, k=-1)))
    a = np.tril(np.ones((3, 3)))
    unit = np.linalg.norm(a @ np.linalg.inv(lower)) / np.linalg.norm(a)
    assert np.sqrt((lower ** 2).sum(axis=1)).max() == pytest.approx(1.0)
    assert mod["error_of"](lower) == pytest.approx(unit * np.sqrt((lower ** 2).sum(axis=0)).max()) and \
        mod["error_of"](lower) > unit * 1.1


@pytest.mark.bench
def test_pfl_side_by_side_end_to_end():
    python = ROOT / ".pfl-venv" / "bin" / "python"
    if not python.exists():
        pytest.skip("pfl's environment (.pfl-venv) is not installed")
    import subprocess
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bandmf" / "pfl_side_by_side.py"),
                          "--rounds", "20", "--bands", "4", "--dim", "1000", "--time-rounds", "3"],
                         capture_output=True, text=True, check=True).stdout
    row = json.loads(out.splitlines()[0])
    assert row["same_C_max_abs_diff"] < 1e-5 and row["ours_C_max_column_norm"] == pytest.approx(1.0)
