"""Flower's own example apps (quickstart-pytorch, quickstart-huggingface, advanced-pytorch; vendored here unchanged
except their data loading and the strategy line, see each SOURCE.md) run through the Flower CLI,
`flwr run <app> --stream`, as written, with the drop-in (`UserDPFedAvg`; `UserDP` around FedAdam and around
advanced-pytorch's own `CustomFedAvg`, whose `start()` writes results, checkpoints and W&B logs), and with
Flower's `DifferentialPrivacyServerSideFixedClipping(FedAvg)`. The runs and the log parsing are
experiments/dropin/flower_examples.py's (which also prints the ε side by side). The default suite runs three
drop-in runs (quickstart-pytorch with FedAdam wrapped, quickstart-huggingface with UserDPFedAvg, advanced-pytorch
with client-side clipping and a budget stop); the others are comparisons (`pytest --run-bench`)."""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("flwr", path=str(Path(sys.executable).parent)) is None,
                                 reason="no flwr CLI")]
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "dropin"))

import flower_examples as fe  # noqa: E402

torch = pytest.importorskip("torch")
S = fe.Settings()
RELEASE_KEYS = {"round", "released", "epsilon", "delta", "noise_multiplier", "clip_norm", "expected_count"}
DIAGNOSTIC_KEYS = {f"diagnostics.{k}" for k in ("nodes_sampled", "nodes_replied", "failures", "rejected", "clipped")}
TRAIN_LOSS = "diagnostics.train_loss"   # the apps' own train_loss, kept as a diagnostic


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    # the HF example's task.py imports `evaluate` at the top (its metric is only used by client-side evaluation,
    # which these runs leave off: the metric lives on the hub)
    pytest.importorskip("evaluate", reason="the HF example imports `evaluate` (pip install evaluate)")
    return fe.make_tiny_bert(tmp_path_factory.mktemp("model") / "tiny-bert")


def clean(run: fe.Run, strategy: str) -> None:
    assert run.returncode == 0, run.log[-4000:]
    assert "Traceback" not in run.log, run.log[-4000:]
    assert f"Starting {strategy} strategy:" in run.log, run.log[-4000:]
    assert "Strategy execution finished" in run.log, run.log[-4000:]


def final_weights(run: fe.Run) -> dict:
    state = torch.load(run.app_dir / "final_model.pt", weights_only=True)
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    return state


def changed(state: dict, initial: dict) -> bool:
    assert state.keys() == initial.keys()
    return any(not torch.equal(state[k], initial[k]) for k in state)


def check_dropin(run: fe.Run, strategy: str = "UserDPFedAvg", label: str = "UserDPFedAvg",
                 client_metrics: frozenset = frozenset()) -> None:
    """`client_metrics`: the diagnostics.* keys of the app's own train metrics (quickstart-pytorch: train_loss)."""
    clean(run, strategy)
    assert f"user-level DP ({label}): Poisson sampling q={S.sampling_rate:g}" in run.log
    assert "client-side evaluation: off" in run.log
    rel = run.releases
    assert [m["round"] for m in rel] == list(range(1, S.rounds + 1)), run.log[-4000:]
    assert all(set(m) == RELEASE_KEYS | DIAGNOSTIC_KEYS | (client_metrics if m["diagnostics.nodes_replied"] else set())
               for m in rel), rel   # an empty cohort has no training loss
    assert all(math.isfinite(m[k]) for m in rel for k in client_metrics if k in m), rel
    eps = [m["epsilon"] for m in rel]
    assert all(math.isfinite(e) and e > 0 for e in eps) and all(b > a for a, b in zip(eps, eps[1:])), eps
    assert eps == pytest.approx(fe.dropin_epsilons(S, S.rounds), rel=1e-9)
    assert all(m["delta"] == S.delta and m["expected_count"] == S.sampling_rate * S.supernodes for m in rel)
    # the apps' replies are all taken: none failed, none rejected
    assert all(m["diagnostics.failures"] == 0 and m["diagnostics.rejected"] == 0 for m in rel), rel
    assert all(m["diagnostics.nodes_replied"] == m["diagnostics.nodes_sampled"] for m in rel), rel
    assert "replies rejected" not in run.log and f"{label}: stopped" not in run.log
    assert f"{label}: finished after {S.rounds} released rounds: epsilon {eps[-1]:.4g}" in run.log
    # Flower's wrapper's mechanism at the same σ, accounted without amplification, costs more per round
    no_amp, _ = fe.flower_epsilons(S, S.rounds)
    assert all(f > e for f, e in zip(no_amp, eps)), (no_amp, eps)


def check_flower_dp(run: fe.Run) -> None:
    clean(run, "DifferentialPrivacyServerSideFixedClipping")
    assert f"configure_train: Sampled {S.cohort} nodes (out of {S.supernodes})" in run.log
    stds = fe.flower_noise_stds(run.log)
    assert stds == pytest.approx([S.noise_multiplier * S.clipping_norm / S.cohort] * S.rounds, rel=1e-3), stds
    assert not run.releases and "epsilon" not in run.log.lower()  # Flower's wrapper reports no ε


# -- quickstart-pytorch ------------------------------------------------------------------------------------
def pytorch_run(variant: str, tmp_path: Path) -> fe.Run:
    run = fe.run_app(fe.PYTORCH, variant, tmp_path, S)
    evals = fe.global_evaluations(run.log)  # its evaluate_fn: round 0, then after each round
    assert len(evals) == S.rounds + 1 and all(math.isfinite(e["loss"]) for e in evals), run.log[-4000:]
    assert evals[-1]["loss"] != evals[0]["loss"]  # the global model moved (its initial weights are not logged)
    final_weights(run)
    return run


@pytest.mark.bench  # a comparison run: pytest --run-bench
def test_pytorch_fedavg_as_written(tmp_path):
    run = pytorch_run("fedavg", tmp_path)
    clean(run, "FedAvg")
    assert len([m for m in fe.aggregated_metrics(run.log) if "train_loss" in m]) == S.rounds
    assert len([m for m in fe.aggregated_metrics(run.log) if "eval_acc" in m]) == S.rounds


@pytest.mark.bench  # UserDPFedAvg through the engine runs in the default suite on quickstart-huggingface
def test_pytorch_userdp_dropin(tmp_path):
    check_dropin(pytorch_run("userdp", tmp_path), client_metrics=frozenset({TRAIN_LOSS}))


def test_pytorch_fedadam_wrapped(tmp_path):
    """Flower's FedAdam wrapped: its server optimizer steps with the released mean; ε as the drop-in's."""
    run = pytorch_run("userdp-fedadam", tmp_path)
    check_dropin(run, "FedAdam", "UserDP(FedAdam)", client_metrics=frozenset({TRAIN_LOSS}))
    assert "FedOpt settings" in run.log      # the wrapped strategy's own summary follows ours


@pytest.mark.bench  # a comparison run: pytest --run-bench
def test_pytorch_flower_dp_wrapper(tmp_path):
    check_flower_dp(pytorch_run("flower-dp", tmp_path))


# -- quickstart-huggingface -------------------------------------------------------------------------------
def huggingface_run(variant: str, tmp_path: Path, model: Path) -> fe.Run:
    from transformers import AutoModelForSequenceClassification

    run = fe.run_app(fe.HUGGINGFACE, variant, tmp_path, S, model_dir=model)
    initial = AutoModelForSequenceClassification.from_pretrained(model, num_labels=2).state_dict()
    assert changed(final_weights(run), initial), "the final weights are the initial ones"
    assert not [m for m in fe.aggregated_metrics(run.log) if "accuracy" in m]  # client-side evaluation off
    return run


@pytest.mark.bench  # a comparison run: pytest --run-bench
def test_huggingface_fedavg_as_written(tmp_path, tiny_bert):
    run = huggingface_run("fedavg", tmp_path, tiny_bert)
    clean(run, "FedAvg")
    assert run.log.count(f"configure_train: Sampled {S.cohort} nodes (out of {S.supernodes})") == S.rounds


@pytest.mark.bench   # opt-in (pytest --run-bench), about 30 s: the PyTorch examples below run in the default suite
def test_huggingface_userdp_dropin(tmp_path, tiny_bert):
    check_dropin(huggingface_run("userdp", tmp_path, tiny_bert))


@pytest.mark.bench  # a comparison run: pytest --run-bench
def test_huggingface_flower_dp_wrapper(tmp_path, tiny_bert):
    check_flower_dp(huggingface_run("flower-dp", tmp_path, tiny_bert))


# -- advanced-pytorch: the app's own CustomFedAvg.start(), wrapped; client-side clipping; a budget stop ------------
def test_advanced_pytorch_custom_start_wrapped_with_client_side_clipping_and_a_budget_stop(tmp_path):
    """CustomFedAvg overrides start() (results.json per round, best-model checkpoints, W&B): wrapped by UserDP with
    each node clipping its own update (the ClientApp's userdp_clip_mod) and a budget that ends the releases after
    round 2 of 4. Its start() runs to its end (no traceback), its files are written, the final model saved, the
    ledger persisted; rounds 3 and 4 send, release and evaluate nothing."""
    import json

    from fl_userdp.records.release_log import read_log

    s = fe.Settings(rounds=4, clipping_norm=0.05)   # small enough that every node's update is clipped
    eps = fe.dropin_epsilons(s, 3)
    run = fe.run_app(fe.ADVANCED, "userdp", tmp_path, s, extra={
        "dp-clipping": "client", "dp-max-epsilon": (eps[1] + eps[2]) / 2, "dp-ledger-path": "ledger.log"})
    clean(run, "CustomFedAvg")
    assert "user-level DP (UserDP(CustomFedAvg))" in run.log and "clipping on the nodes" in run.log
    assert "privacy budget: round 3 would take epsilon" in run.log and "Traceback" not in run.log
    rel = run.releases
    assert [m["round"] for m in rel] == [1, 2] and [m["epsilon"] for m in rel] == pytest.approx(eps[:2], rel=1e-9)
    assert all(m["diagnostics.rejected"] == 0 and m["diagnostics.failures"] == 0 for m in rel), rel
    # every node clipped its own update (the mod's flags), and the server accepted each (none above C)
    assert all(m["diagnostics.clipped"] == m["diagnostics.nodes_replied"] == m["diagnostics.nodes_sampled"]
               for m in rel), rel
    assert sum(m["diagnostics.nodes_replied"] for m in rel) > 0, rel
    assert all(math.isfinite(m[TRAIN_LOSS]) for m in rel if m["diagnostics.nodes_replied"]), rel
    # CustomFedAvg's own outputs: results.json every round, checkpoints of the released models, W&B's calls
    (out,) = [p.parent for p in (run.app_dir / "outputs").rglob("results.json")]
    results = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in results] == [1, 2, 3, 4]
    assert [bool(r["train_metrics"]) for r in results] == [True, True, False, False]
    assert [bool(r["evaluate_metrics_serverapp"]) for r in results] == [True, True, False, False]
    assert results[1]["train_metrics"]["epsilon"] == pytest.approx(eps[1], rel=1e-9)
    checkpoints = sorted(p.name for p in out.glob("model_state_acc_*_round_*.pth"))
    assert checkpoints and all(int(p.rsplit("_", 1)[1][:-4]) in (1, 2) for p in checkpoints), checkpoints
    wandb = [json.loads(line) for line in (run.app_dir / "wandb-offline.jsonl").read_text().splitlines()]
    assert "init" in wandb[0] and {e["step"] for e in wandb[1:] if "epsilon" in e["data"]} == {1, 2}
    state = final_weights(run)
    assert torch.isfinite(state["fc2.weight"]).all()
    # the ledger on disk: the run's settings and the two releases
    log = read_log(run.app_dir / "ledger.log")
    assert log.run["clipping"] == "client" and [r["round"] for r in log.releases] == [1, 2]
