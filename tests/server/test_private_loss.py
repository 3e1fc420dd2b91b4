"""Diagnostics follow the data (privacy.publish-diagnostics = auto), and privacy.private-loss releases the cohort's
mean training loss and clipped fraction with noise, accounted jointly with the round's sum: the effective
multiplier is checked against direct computations on the joint Gaussian mechanism, and a run's ledger against a
dp_accounting PLD of that mechanism."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from scipy import stats

import fl_userdp
from fl_userdp.accounting import make_event
from fl_userdp.accounting.pld import step_pld
from fl_userdp.cli import main
from fl_userdp.config import loss_bound, parse_config, publish_diagnostics
from fl_userdp.errors import ConfigError
from fl_userdp.mechanism.adaptive_clip import effective_noise_multiplier
from fl_userdp.mechanism.private_loss import clip_losses, clipped_loss_sum, node_loss, with_loss, without_loss
from fl_userdp.records import report
from fl_userdp.server.runner import noise_multiplier
from fl_userdp.server.strategy import UserDPStrategy

L = 2.0
LINEAR = {"model.name": "linear", "model.dim": 8, "data.num-users": 200, "data.heldout-users": 8,
          "sim.users-per-node": 50, "privacy.sampling-rate": 0.2, "privacy.noise-multiplier": 1.0,
          "privacy.loss-bound": L, "train.rounds": 3, "train.eval-every": 0}


# -- the mechanism's arithmetic ---------------------------------------------------------------------------------
def test_loss_clipping_and_a_nodes_bounded_part():
    assert list(clip_losses(np.array([-1.0, 0.5, 3.0, np.nan, np.inf, -np.inf]), 2.0)) == [0, 0.5, 2, 2, 2, 0]
    # ULS: a record is a user, its loss the mean of its examples' (then clipped)
    assert clipped_loss_sum(np.array([1.0, 3.0, 5.0, 0.5]), 2.0, np.array([2, 1, 1])) == 2.0 + 2.0 + 0.5
    assert node_loss(10.0, 3, 2.0) == 6.0 - 3.0       # bounded to records × L
    assert node_loss(-4.0, 3, 2.0) == -3.0            # and to 0
    assert node_loss(None, 3, 2.0) == node_loss(float("nan"), 3, 2.0) == 0.0
    assert with_loss(1.0, 1e12, False) == pytest.approx(1.0)
    assert with_loss(2.0, 3.0, False) == pytest.approx((0.25 + 2 / 9) ** -0.5)
    assert with_loss(2.0, 3.0, True) == pytest.approx((0.25 + 1 / 9) ** -0.5)
    assert without_loss(with_loss(1.3, 4.0, False), 4.0, False) == pytest.approx(1.3)
    with pytest.raises(ConfigError) as err:
        without_loss(1.0, 1.2, False)  # 2 σ_l⁻² > σ_eff⁻²: the loss alone spends more than the budget
    assert err.value.key == "privacy.loss-noise-multiplier"


def direct_delta(mode: str, q: float, scales: np.ndarray, shift: np.ndarray, eps: float, k: int = 3,
                 n: int = 400_000) -> float:
    """δ(ε) of one step of the joint Gaussian mechanism straight from its densities (Monte Carlo): noise std
    `scales` per coordinate, one record adds `shift` (its worst case: every part at its sensitivity), a user adds
    J records (ULS: J ~ Bernoulli(q); ELS: J ~ Binomial(k, q)). Remove: P = mixture over J, Q = J = 0."""
    rng = np.random.default_rng(0)
    js = np.arange(k + 1) if mode == "els" else np.array([0, 1])
    w = stats.binom.pmf(js, k, q) if mode == "els" else np.array([1 - q, q])
    mu = shift / scales

    def log_ratio(z):  # z: the output in units of each coordinate's noise
        terms = np.log(w)[None, :] + js[None, :] * (z @ mu)[:, None] - 0.5 * js[None, :] ** 2 * (mu @ mu)
        return np.logaddexp.reduce(terms, axis=1)

    j = rng.choice(js, size=n, p=w)
    z_p = j[:, None] * mu[None, :] + rng.standard_normal((n, mu.size))
    z_q = rng.standard_normal((n, mu.size))
    remove = np.mean(np.maximum(0.0, 1 - np.exp(eps - log_ratio(z_p))))
    add = np.mean(np.maximum(0.0, 1 - np.exp(eps + log_ratio(z_q))))
    return max(remove, add)


@pytest.mark.parametrize("mode, adaptive", [("uls", False), ("uls", True), ("els", False)])
def test_joint_release_matches_a_direct_computation_on_the_joint_mechanism(mode, adaptive):
    """(sum/C, [count with σ_b,] loss part, [clipped count]) — the ledger's event at σ_eff against the densities."""
    sigma, count_sigma, loss_sigma, q, eps = 1.2, 0.8, 1.5, 0.3, 0.5
    C = 1.0
    if adaptive:  # sum (C, σC), adaptive count (½, σ_b), loss part (L/2, σ_l·L/2)
        scales = np.array([sigma * C, count_sigma, loss_sigma * L / 2])
        shift = np.array([C, 0.5, L / 2])
        rest = effective_noise_multiplier(sigma, count_sigma)
    else:      # sum, loss part, clipped count (½, σ_l·½)
        scales = np.array([sigma * C, loss_sigma * L / 2, loss_sigma / 2])
        shift = np.array([C, L / 2, 0.5])
        rest = sigma
    sigma_eff = with_loss(rest, loss_sigma, adaptive)
    k = 3 if mode == "els" else None
    ours = step_pld(make_event(mode, q, sigma_eff, k), 1e-4).get_delta_for_epsilon(eps)
    assert ours == pytest.approx(direct_delta(mode, q, scales, shift, eps), abs=3e-3)
    alone = step_pld(make_event(mode, q, rest, k), 1e-4).get_delta_for_epsilon(eps)
    assert alone < ours - 0.01  # the loss release costs privacy


def test_without_sampling_the_joint_release_is_the_composition_of_its_gaussian_parts():
    """q = 1: independent noise per part, so the joint mechanism is the composition of one Gaussian mechanism per
    part — a dp_accounting PLD of each, composed, gives the same ε as the single event at σ_eff."""
    sigma, loss_sigma, delta = 1.5, 4.0, 1e-5
    parts = [pld_lib.from_gaussian_mechanism(s, value_discretization_interval=1e-4)
             for s in (sigma, loss_sigma, loss_sigma)]
    composed = parts[0].compose(parts[1]).compose(parts[2])
    joint = pld_lib.from_gaussian_mechanism(with_loss(sigma, loss_sigma, False), value_discretization_interval=1e-4)
    assert joint.get_epsilon_for_delta(delta) == pytest.approx(composed.get_epsilon_for_delta(delta), rel=2e-3)


# -- a run --------------------------------------------------------------------------------------------------------
def run(tmp_path: Path, name: str, **extra):
    cfg = {**LINEAR, **extra}
    return fl_userdp.simulate(cfg, modes="uls", backend="inprocess", out=tmp_path / name)["uls"]


def direct_epsilon(q: float, sensitivity: float, rounds: int, delta: float) -> float:
    """ε of `rounds` releases of the joint Gaussian mechanism (noise std 1 per coordinate after scaling, the
    record's shift has norm `sensitivity`), Poisson-subsampled at q, by dp_accounting's PLD."""
    one = pld_lib.from_gaussian_mechanism(1.0, sensitivity=sensitivity, sampling_prob=q,
                                          value_discretization_interval=1e-4)
    return one.self_compose(rounds).get_epsilon_for_delta(delta)


def test_private_loss_is_released_with_noise_and_accounted(tmp_path):
    loss_sigma, q, rounds = 5.0, LINEAR["privacy.sampling-rate"], LINEAR["train.rounds"]
    on = run(tmp_path, "on", **{"privacy.private-loss": True, "privacy.loss-noise-multiplier": loss_sigma})
    off = run(tmp_path, "off")
    for rec in on.records:
        assert rec["private_train_loss"] is not None and rec["private_clipped_fraction"] is not None
        # it is the clipped training loss over the *expected* count, plus the noise (std σ_l·L/2 / E = 0.0625)
        E, n = rec["expected_count"], rec["users_replied"]
        exact = n / E * (rec["train_loss"] - L / 2) + L / 2
        assert abs(rec["private_train_loss"] - exact) < 6 * loss_sigma * L / 2 / E
    assert [r["private_train_loss"] for r in on.records] != [r["train_loss"] for r in on.records]
    line = json.loads((tmp_path / "on" / report.METRICS).read_text().splitlines()[0])
    assert "private_train_loss" in line and "private_train_loss" not in line.get("diagnostics", {})  # covered
    assert "private_train_loss" not in off.records[0]
    # accounted: more ε than the sum alone at the same σ, and exactly the joint mechanism's PLD
    assert on.noise_multiplier == off.noise_multiplier == 1.0
    joint = math.sqrt(1.0 + 2 / loss_sigma ** 2)
    assert on.epsilon > off.epsilon + 0.05
    assert on.epsilon == pytest.approx(direct_epsilon(q, joint, rounds, 1e-5), rel=2e-3)
    assert off.epsilon == pytest.approx(direct_epsilon(q, 1.0, rounds, 1e-5), rel=2e-3)
    summary = json.loads((tmp_path / "on" / "summary.json").read_text())
    assert summary["modes"]["uls"]["final_private_train_loss"] == on.records[-1]["private_train_loss"]


def test_two_secure_runs_differ_and_a_huge_multiplier_drowns_the_loss(tmp_path):
    private = {"privacy.private-loss": True, "privacy.loss-noise-multiplier": 5.0, "privacy.secure-mode": True}
    a, b = run(tmp_path, "a", **private), run(tmp_path, "b", **private)
    assert [r["private_train_loss"] for r in a.records] != [r["private_train_loss"] for r in b.records]
    loud = run(tmp_path, "loud", **{"privacy.private-loss": True, "privacy.loss-noise-multiplier": 1e6})
    E = loud.records[0]["expected_count"]  # noise std 1e6 · L/2 / E = 25,000 around a loss in [0, L]
    assert all(abs(r["private_train_loss"] - L / 2) > 100 * L for r in loud.records)
    assert all(abs(r["private_clipped_fraction"] - 0.5) > 100 for r in loud.records)
    assert 1e6 * L / 2 / E > 1e4


def test_calibration_gives_the_loss_its_share_of_the_target():
    cfg = parse_config({**LINEAR, "privacy.noise-multiplier": "auto", "privacy.target-epsilon": 3.0,
                        "privacy.private-loss": True, "privacy.loss-noise-multiplier": 3.0})
    counts = np.full(200, 4)
    sigma = noise_multiplier(cfg, 0.2 * 200)
    plain = noise_multiplier(parse_config({**LINEAR, "privacy.noise-multiplier": "auto",
                                           "privacy.target-epsilon": 3.0}))
    assert sigma > plain  # the sum is noisier: the loss takes part of the budget
    s = UserDPStrategy(cfg, counts, [np.zeros(8)], sigma)
    eps = s.accountant.epsilon_after(s.event, 3)
    assert 2.9 < eps <= 3.0
    with pytest.raises(ConfigError) as err:
        noise_multiplier(parse_config({**LINEAR, "privacy.noise-multiplier": "auto", "privacy.private-loss": True,
                                       "privacy.loss-noise-multiplier": 0.2}), 40.0)
    assert err.value.key == "privacy.loss-noise-multiplier"


def test_the_loss_bound_is_stated_or_refused():
    assert loss_bound(parse_config({"privacy.private-loss": True})) == pytest.approx(math.log(128))
    assert loss_bound(parse_config({"privacy.private-loss": True, "model.vocab-size": 300})) == pytest.approx(
        math.log(300))
    with pytest.raises(ConfigError) as err:
        parse_config({"model.name": "linear", "privacy.private-loss": True})
    assert err.value.key == "privacy.loss-bound"
    for key, bad in (("privacy.loss-bound", "0"), ("privacy.loss-bound", "inf"),
                     ("privacy.loss-noise-multiplier", "-1")):
        with pytest.raises(ConfigError) as err:
            parse_config({key: bad})
        assert err.value.key == key


# -- diagnostics follow the data ------------------------------------------------------------------------------
def jsonl_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "users.jsonl"
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "paper"]
    with path.open("w") as fh:
        for u in range(40):
            for _ in range(int(rng.integers(1, 6))):
                text = " ".join(rng.choice(words, size=12))
                fh.write(json.dumps({"user": f"u{u}", "text": text}) + "\n")
    return path


TINY = ["--set", "model.hidden-size=16", "--set", "model.num-layers=1", "--set", "model.seq-len=16",
        "--set", "model.lora-rank=2", "--set", "privacy.sampling-rate=0.25", "--set", "privacy.noise-multiplier=1",
        "--set", "data.heldout-users=4", "--set", "sim.users-per-node=16", "--set", "train.eval-every=1"]


def test_diagnostics_default_off_for_a_file_and_on_for_synthetic_data(tmp_path, capsys):
    data = jsonl_corpus(tmp_path)
    assert publish_diagnostics(parse_config({}))                          # built-in synthetic data
    assert not publish_diagnostics(parse_config({"data.source": str(data)}))
    assert not publish_diagnostics(parse_config({"model.name": "mypkg.task:make"}))
    assert publish_diagnostics(parse_config({"data.source": str(data), "privacy.publish-diagnostics": "true"}))
    assert not publish_diagnostics(parse_config({"privacy.publish-diagnostics": "false"}))
    assert parse_config({"privacy.publish-diagnostics": "auto"}).privacy.publish_diagnostics is None

    out = tmp_path / "own"
    assert main(["run", "--backend", "inprocess", "--no-progress", "--rounds", "2", "--out", str(out),
                 "--set", f"data.source={data}", *TINY, "--set", "privacy.private-loss=true",
                 "--set", "privacy.loss-noise-multiplier=2"]) == 0
    console = capsys.readouterr()
    assert "no diagnostics published (auto: users' own data)" in console.err
    assert "private training loss: each record's loss clipped to [0, 4.852]" in console.err
    with_it, without = (float(x) for x in
                        console.err.split("ε over 2 rounds ")[1].split(" without it")[0].split(" with it, "))
    assert with_it > without
    lines = [json.loads(x) for x in (out / report.METRICS).read_text().splitlines()]
    for line in lines:
        assert set(line) <= set(report.COVERED) and "diagnostics" not in line
        assert line["private_train_loss"] is not None and line["private_clipped_fraction"] is not None
    assert lines[-1]["epsilon"] == pytest.approx(with_it, rel=1e-3)  # the start line said so (4 digits)
    assert "OUTSIDE" not in json.loads((out / "summary.json").read_text())["guarantee"].split("Limits")[0]

    synthetic = tmp_path / "synthetic"
    assert main(["run", "--backend", "inprocess", "--no-progress", "--rounds", "1", "--out", str(synthetic),
                 "--set", "data.num-users=32", *TINY]) == 0
    console = capsys.readouterr()
    assert "diagnostics published (auto: built-in synthetic data)" in console.err
    assert "diagnostics" in json.loads((synthetic / report.METRICS).read_text().splitlines()[0])


def test_data_statistics_are_labelled_outside_the_guarantee(tmp_path, capsys):
    data = jsonl_corpus(tmp_path)
    assert main(["data-stats", "--source", str(data)]) == 0
    out = capsys.readouterr().out
    assert sum("outside the DP guarantee" in line for line in out.splitlines()) == 1 and "p100" in out
    assert main(["plan", "--source", str(data), "--examples-per-step", "8", "--steps", "10", "--epsilon", "8",
                 "--delta", "1e-5"]) == 0
    out = capsys.readouterr().out
    assert sum("outside the DP guarantee" in line for line in out.splitlines()) == 1
    assert main(["data-stats", "--source", str(data), "--json"]) == 0
    assert "outside the DP guarantee" in json.loads(capsys.readouterr().out)["guarantee"]
