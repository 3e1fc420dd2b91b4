"""Flower's own example apps (quickstart-pytorch, quickstart-huggingface; vendored here unchanged except their
data loading and the one strategy line, see each SOURCE.md) run through the Flower CLI, `flwr run <app> --stream`,
as written with FedAvg, with the drop-in `UserDPFedAvg`, and with Flower's
`DifferentialPrivacyServerSideFixedClipping(FedAvg)`. The runs and the log parsing are
experiments/dropin/flower_examples.py's (which also prints the ε side by side). The default suite runs the
drop-in variants; the as-written and Flower-wrapper runs are comparisons (`pytest --run-bench`)."""
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


def check_dropin(run: fe.Run) -> None:
    clean(run, "UserDPFedAvg")
    assert f"user-level DP: Poisson sampling q={S.sampling_rate:g}" in run.log
    assert "client-side evaluation: off" in run.log
    rel = run.releases
    assert [m["round"] for m in rel] == list(range(1, S.rounds + 1)), run.log[-4000:]
    assert all(set(m) == RELEASE_KEYS | DIAGNOSTIC_KEYS for m in rel), rel
    eps = [m["epsilon"] for m in rel]
    assert all(math.isfinite(e) and e > 0 for e in eps) and all(b > a for a, b in zip(eps, eps[1:])), eps
    assert eps == pytest.approx(fe.dropin_epsilons(S, S.rounds), rel=1e-9)
    assert all(m["delta"] == S.delta and m["expected_count"] == S.sampling_rate * S.supernodes for m in rel)
    # the apps' replies are all taken: none failed, none rejected
    assert all(m["diagnostics.failures"] == 0 and m["diagnostics.rejected"] == 0 for m in rel), rel
    assert all(m["diagnostics.nodes_replied"] == m["diagnostics.nodes_sampled"] for m in rel), rel
    assert "replies rejected" not in run.log and "UserDPFedAvg: stopped" not in run.log
    assert f"UserDPFedAvg: finished after {S.rounds} released rounds: epsilon {eps[-1]:.4g}" in run.log
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


def test_pytorch_userdp_dropin(tmp_path):
    check_dropin(pytorch_run("userdp", tmp_path))


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


def test_huggingface_userdp_dropin(tmp_path, tiny_bert):
    check_dropin(huggingface_run("userdp", tmp_path, tiny_bert))


@pytest.mark.bench  # a comparison run: pytest --run-bench
def test_huggingface_flower_dp_wrapper(tmp_path, tiny_bert):
    check_flower_dp(huggingface_run("flower-dp", tmp_path, tiny_bert))
