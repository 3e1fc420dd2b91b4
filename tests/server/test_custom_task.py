"""Your own task through the round loop: `model.name = "package.module:factory"` in an in-process compare
(both modes, the server's initial weights from the same factory), and bad specs refused with one line."""
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import fl_userdp  # noqa: E402
from fl_userdp.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPEC = "experiments.custom_task.tabular:make_task"
SMALL = {"model.name": SPEC, "model.hidden-size": 16, "data.num-users": 128, "data.heldout-users": 4,
         "sim.users-per-node": 64, "train.rounds": 2, "train.eval-every": 1, "privacy.sampling-rate": 0.25,
         "privacy.target-epsilon": 4.0, "train.server-lr": 0.05}


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # `fl-userdp` finds the example from the repository root


def test_compare_inprocess_runs_both_modes_and_moves_the_weights(tmp_path):
    from fl_userdp.config import parse_config
    from fl_userdp.local.task import load_task
    from fl_userdp.server.runner import prepare

    cfg = fl_userdp.api.as_config({**SMALL, "out": str(tmp_path / "run")})
    init = prepare(cfg, ["uls", "els"]).init_weights
    fresh = load_task(parse_config(SMALL)).init_weights  # what every node's factory call builds
    assert all(np.array_equal(a, b) for a, b in zip(init, fresh))
    res = fl_userdp.simulate(cfg, modes=("uls", "els"), backend="inprocess", out=tmp_path / "run")
    for mode in ("uls", "els"):
        run = res[mode]
        assert [r["round"] for r in run.records] == [1, 2]
        assert 0 < run.epsilons[0] < run.epsilons[-1] <= 4.0 + 1e-9
        assert all(np.isfinite(r["eval_loss"]) for r in run.records)
        assert run.records[-1]["examples_processed"] > 0
        assert [w.shape for w in run.weights] == [a.shape for a in init]
        assert max(float(np.abs(w - a).max()) for w, a in zip(run.weights, init)) > 1e-3  # the weights moved
    assert not all(np.array_equal(a, b) for a, b in zip(res["uls"].weights, res["els"].weights))
    assert (tmp_path / "run" / "checkpoint-els.npz").exists()


@pytest.mark.parametrize("spec,needle", [
    ("no_such_package.tasks:make_task", "cannot be imported"),
    ("experiments.custom_task.tabular:no_such_factory", "has no attribute 'no_such_factory'"),
    ("experiments.custom_task.tabular:FEATURES", "must name a callable factory"),
    ("json:dumps", "factory failed"),
    ("builtins:repr", "factory must return a task with .module"),
    ("not:a:spec", "must be 'tiny', 'linear', an existing local path or a task factory"),
])
def test_bad_model_name_exits_2_with_one_line(tmp_path, capsys, spec, needle):
    code = main(["compare", "--backend", "inprocess", "--out", str(tmp_path / "bad"), "--rounds", "1",
                 "--set", f"model.name={spec}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("fl-userdp compare: error: model.name ")
    assert needle in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "bad" / "metrics.jsonl")


def test_data_stats_counts_the_tasks_own_corpus(capsys):
    import json

    from fl_userdp.config import parse_config
    from fl_userdp.local.task import load_task

    assert main(["data-stats", "--set", f"model.name={SPEC}", "--num-users", "50", "--heldout-users", "3",
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    corpus = load_task(parse_config({"model.name": SPEC, "data.num-users": 50, "data.heldout-users": 3})).corpus
    assert payload["training_users"] == 50 and payload["examples"] == int(corpus.counts.sum())
    assert payload["heldout_examples"] == len(corpus.heldout()) and payload["source"].startswith(SPEC)
