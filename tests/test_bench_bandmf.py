"""experiments/bench_bandmf.py at its smallest setting (seconds): every figure it reports is produced."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_bandmf_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_bandmf", ROOT / "experiments" / "bench_bandmf.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.jsonl"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r for r in rows if r["figure"] == "error_ratio"]
    assert {r["coefficients"] for r in errors} == {"sqrt", "optimized"}
    for r in errors:
        assert 0 < r["closed_form"] < 1 and r["measured"] == pytest.approx(r["closed_form"], rel=0.15)
    (timing,) = [r for r in rows if r["figure"] == "round_time"]
    assert set(timing["median_s"]) == {"independent", "bandmf b=4"} and timing["d"] > 0
    assert [r["model"] for r in rows if r["figure"] == "memory"] == ["linear"]
    assert "wrote" in capsys.readouterr().out
