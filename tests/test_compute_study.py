"""The large-compute study's scripts at their smallest: the report's tests on synthetic rows (known answers),
and the runner's tuning logic on a fake study (no simulation)."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.compute import report, run  # noqa: E402


def rows(tmp_path, slope=0.01, eps_shift=0.02, div=0.03, noise=0.002, seeds=range(6)):
    rng = np.random.default_rng(0)
    out = []

    def add(corpus, e, t, seed, gap):
        base = 2.0 + rng.normal(0, 0.01)
        for mode, loss in (("uls", base), ("els", base + gap + rng.normal(0, noise))):
            out.append({"key": f"report|{corpus}|{mode}|eps{e:g}|T{t}|seed{seed}", "eval_loss": loss, "epochs": 0.5,
                        "config": {"privacy.max-examples-per-user": 4, "train.server-lr": 0.003, "privacy.clip-norm": 0.5}})
    for s in seeds:
        for e in (1.0, 8.0):
            for t in (25, 100, 400):
                add("shakespeare", e, t, s, slope * math.log2(t) + (eps_shift if e == 1.0 else 0.0))
        for t in (25, 100):
            add("independent", 8.0, t, s, div)
            add("near-copies", 8.0, t, s, 0.0)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    (tmp_path / "warm_base.json").write_text(json.dumps({"heldout_loss_warm": 2.07, "heldout_loss_random": 5.3,
                                                          "public_tokens": 1}))


def test_report_finds_the_planted_effects(tmp_path, monkeypatch):
    rows(tmp_path)
    monkeypatch.setattr(report, "HERE", tmp_path)
    cells = report.report_rows(tmp_path / "results.jsonl")
    tests = report.family(cells)
    assert tests["H1a"]["mean"] == pytest.approx(0.01, abs=2e-3) and tests["H1a"]["decided"]
    assert tests["H2"]["mean"] == pytest.approx(0.02, abs=3e-3) and tests["H2"]["decided"]
    assert tests["H3a"]["mean"] == pytest.approx(0.03, abs=3e-3) and tests["H3a"]["n"] == 6
    page = report.PAGE.read_text()
    assert report.main(tmp_path) == 0 and (tmp_path / "results.md").exists() and (tmp_path / "elsvsuls.png").exists()
    assert report.PAGE.read_text() == page                     # a copy's files never touch the docs page
    text = report.page(tests, tests, cells, ["# t", "## s"])
    assert "**H1a**" in text and "decided, in the direction the paper's claim predicts" in text


def test_families_use_seed_complete_seeds_and_holm_over_five(tmp_path):
    """A seed missing one cell of an arm is left out of every test of that arm (not only the test that needs
    the cell); an arm without diversity cells still corrects over five (H3a/H3b count with p = 1)."""
    rows(tmp_path)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if '"report|shakespeare|els|eps8|T400|seed5"' not in ln]
    (tmp_path / "results.jsonl").write_text("\n".join(kept) + "\n")
    cells = report.report_rows(tmp_path / "results.jsonl")
    tests = report.family(cells)
    assert tests["H1a"]["n"] == tests["H2"]["n"] == 5          # H1a needs no ε = 8 cell, yet seed 5 is out
    assert tests["H3a"]["n"] == 6                              # the diversity seeds are their own
    arm = report.family(cells, diversity=False)
    assert arm["H3a"]["n"] == 0 and arm["H3a"]["p_holm"] == 1
    raw = sorted(v["p"] for k, v in arm.items() if k.startswith(("H1", "H2")))
    assert min(v["p_holm"] for v in arm.values()) == pytest.approx(min(1.0, 5 * raw[0]))


def test_report_says_not_decided_without_an_effect(tmp_path):
    rows(tmp_path, slope=0.0, eps_shift=0.0, div=0.0, noise=0.01)
    tests = report.family(report.report_rows(tmp_path / "results.jsonl"))
    assert sum(t["decided"] for t in tests.values()) <= 1


def test_holm_is_step_down():
    adj = report.holm({"a": 0.01, "b": 0.02, "c": 0.04})
    assert adj == {"a": 0.03, "b": 0.04, "c": 0.04}


def test_tuning_steps_past_an_edge_and_stops(monkeypatch):
    """A fake study whose loss is a bowl in log lr with its bottom below the grid: the search steps down."""
    class Fake:
        def run(self, batch):
            out = {}
            for key, cfg in batch.items():
                lr, cap, clip = cfg["train.server-lr"], cfg["privacy.max-examples-per-user"], cfg["privacy.clip-norm"]
                out[key] = (math.log(lr) - math.log(0.0003)) ** 2 + abs(cap - 4) * 0.01 + abs(math.log(clip / 0.5))
            return out
    monkeypatch.setattr(run, "counts_of", lambda corpus, seed, split: np.full(100, 10))
    monkeypatch.setattr(run, "base_config", lambda corpus, seed, split=0: {"seed": seed})
    best = run.tune(Fake(), [("c", "uls", 8.0, 25)], lambda c: (100,))
    lr, cap, clip = best[("c", "uls", 8.0, 25)]
    assert lr == pytest.approx(0.001 / 3) and cap == 4 and clip == 0.5


def test_the_bandmf_family_pairs_each_mode_with_the_matched_arm(tmp_path):
    """Amendment 5a: banded rows 0.05 above the matched arm's for ULS only: M-uls decided (BandMF worse), M-els
    not; the family is the three gap tests and the two mechanism contrasts, Holm over those five."""
    rng = np.random.default_rng(1)
    out = []
    for s in range(6):
        for e in (1.0, 8.0):
            for t in (25, 400):
                for mode in ("uls", "els"):
                    base = 2.0 + 0.01 * s + rng.normal(0, 1e-4)
                    for arm, shift in (("shakespeare-cap4", 0.0), ("shakespeare-bmf16", 0.05 if mode == "uls" else 0)):
                        out.append({"key": f"report|{arm}|{mode}|eps{e:g}|T{t}|seed{s}", "eval_loss": base + shift,
                                    "config": {}})
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    tests = report.bandmf_family(report.report_rows(tmp_path / "r.jsonl"))
    assert sorted(tests) == ["H1a-bmf", "H1b-bmf", "H2-bmf", "M-els", "M-uls"]
    assert tests["M-uls"]["mean"] == pytest.approx(0.05, abs=1e-3) and tests["M-uls"]["decided"]
    assert not tests["M-els"]["decided"] and tests["M-uls"]["n"] == 6
