"""Synthetic mean estimation: exact recovery without noise, noise variance, accountant, CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest

from fl_userdp.study import mean_estimation as me
from fl_userdp.accounting import UserLevelAccountant, make_event
from fl_userdp.cli import main

SPEC = me.TaskSpec(num_users=300, dim=8, heterogeneity=1.0, diversity=2.0)


@pytest.fixture(scope="module")
def pop():
    return me.Population(SPEC, seed=3)


def test_examples_are_fixed_and_capped_means_match(pop):
    capped = pop.capped(4)
    for u in (0, 7, 299):
        ids = capped.kept.of_user(u)
        x = pop.examples(np.full(ids.size, u), ids)
        np.testing.assert_allclose(x.mean(0), capped.means[u], atol=1e-12)
        np.testing.assert_array_equal(x, pop.examples(np.full(ids.size, u), ids))
    assert capped.total == int(np.minimum(pop.counts, 4).sum())


def _all_capped_examples(pop, k):
    kept = pop.capped(k).kept
    return pop.examples(kept.owners, kept.example_ids)


@pytest.mark.parametrize("k", [1, 4])
def test_noiseless_unclipped_recovery(pop, k):
    # q = 1, σ = 0, C = inf, lr = 1: one step lands exactly on the target of each mode.
    uls = me.train(pop, "uls", k, 1.0, 0.0, 1.0, np.inf, steps=3, seed=0)
    np.testing.assert_allclose(uls.thetas[0], pop.capped(k).means.mean(0), atol=1e-10)
    els = me.train(pop, "els", k, 1.0, 0.0, 1.0, np.inf, steps=3, seed=0)
    np.testing.assert_allclose(els.thetas[0], _all_capped_examples(pop, k).mean(0), atol=1e-10)
    if k == 1:  # at k = 1 ULS and ELS are the same algorithm
        np.testing.assert_allclose(uls.thetas[0], els.thetas[0], atol=1e-10)


def test_noiseless_small_lr_converges_to_mode_targets(pop):
    res = me.train(pop, "uls", 4, 1.0, 0.0, [0.3], [np.inf], steps=60, seed=1)
    np.testing.assert_allclose(res.thetas[0], pop.capped(4).means.mean(0), atol=1e-8)


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_one_noisy_step_variance(mode):
    # Known data: θ0 = 0, lr = 1, q = 1 and every example equal to μ, so the clipped sum is
    # deterministic; what remains is the release noise N(0, σ²C²/E²) in each of d coordinates.
    spec = me.TaskSpec(num_users=50, dim=16, heterogeneity=0.0, diversity=0.0)
    p = me.Population(spec, 0)  # every example equals μ = 1: gradient −1 per record, norm 4
    sigma, clip, k = 1.7, 2.0, 2
    capped = p.capped(k)
    expected = me.expected_count(mode, 1.0, spec.num_users, capped.total)
    records = spec.num_users if mode == "uls" else capped.total
    data_part = records * clip / 4.0 * np.ones(spec.dim) / expected  # each record clipped to norm C along +1
    reps = 1500
    errs = np.empty(reps)
    for r in range(reps):
        res = me.train(p, mode, k, 1.0, sigma, 1.0, clip, steps=1, seed=r)
        errs[r] = ((res.thetas[0] - data_part) ** 2).sum()
    want = spec.dim * sigma**2 * clip**2 / expected**2
    assert abs(errs.mean() / want - 1) < 0.04  # sd of the ratio = sqrt(2/(d·reps)) ≈ 0.9%


def test_grid_point_equals_single_run(pop):
    """Without noise a grid point is the single run (same sample, same clipped sums; BLAS rounding only)."""
    grid = me.train(pop, "els", 4, 0.05, 0.0, [0.1, 0.5, 0.2], [1.0, 2.0, 0.5], steps=20, seed=5)
    alone = me.train(pop, "els", 4, 0.05, 0.0, 0.5, 2.0, steps=20, seed=5)
    np.testing.assert_allclose(grid.thetas[1], alone.thetas[0], rtol=1e-12)


def test_grid_points_and_modes_never_share_noise():
    """σ so large that the estimates are the noise: grid points, modes and seeds give uncorrelated noise."""
    big = me.Population(me.TaskSpec(num_users=200, dim=20_000), 0)
    def noise(mode, clip, seed=3):
        return me.train(big, mode, 2, 0.2, 1e6, 1.0, clip, steps=1, seed=seed).thetas[0]
    a = noise("els", 1.0)
    for other in (noise("els", 1.0 + 1e-9), noise("uls", 1.0), noise("els", 1.0, seed=4)):
        assert abs(np.corrcoef(a, other)[0, 1]) < 0.05
    np.testing.assert_array_equal(a, noise("els", 1.0))  # the same release is reproducible


def test_run_uses_the_flower_accountant_and_meets_epsilon(pop):
    res = me.run(SPEC, "els", 2.0, 1e-5, 4, sampling_rate=0.05, steps=20, population=pop)
    assert res.epsilon is not None and 1.9 <= res.epsilon <= 2.0  # calibrated: at the target, never above
    acc = UserLevelAccountant(1e-5)
    out = me.train(pop, "uls", 4, 0.05, res.noise_multiplier, 0.1, 1.0, 20, seed=0, accountant=acc,
                   record_every=5)
    assert type(acc) is UserLevelAccountant and acc.steps == 20 and len(acc.history) == 4
    # the ledger composed 20 ULS releases: an independent composition gives the same ε
    oracle = UserLevelAccountant(1e-5).compose(make_event("uls", 0.05, res.noise_multiplier), 20)
    assert out.epsilon == pytest.approx(oracle, rel=1e-12) and acc.history == sorted(acc.history)


def test_expected_kept_matches_draws():
    spec = me.TaskSpec(num_users=5000)
    for k in (1, 4, 16):
        draws = [me.Population(spec, s).capped(k).total for s in range(3)]
        assert abs(np.mean(draws) / me.expected_kept(spec, k) - 1) < 0.02


def test_cli_json_contract(capsys):
    rc = main(["mean-estimation", "--users", "300", "--dim", "4", "--steps", "10", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in data["results"]] == ["uls", "els"]
    for r in data["results"]:
        assert 1.9 <= r["epsilon"] <= 2.0 and r["noise_multiplier"] > 0 and r["final_error"] > 0
        # one mode alone reports the same run as in "both" (same seed, same σ, same error)
        assert main(["mean-estimation", "--users", "300", "--dim", "4", "--steps", "10", "--json",
                     "--mode", r["mode"]]) == 0
        alone = json.loads(capsys.readouterr().out)["results"][0]
        assert alone["final_error"] == r["final_error"] and alone["epsilon"] == r["epsilon"]


@pytest.mark.parametrize("args,needle", [
    (["--users", "0"], "--users"),
    (["--epsilon", "-1"], "--epsilon"),
    (["--delta", "1"], "--delta"),
    (["--max-examples-per-user", "0"], "--max-examples-per-user"),
    (["--mode", "xyz"], "--mode"),
])
def test_cli_bad_input_exits_2_with_one_line(args, needle):
    out = subprocess.run([sys.executable, "-m", "fl_userdp", "mean-estimation", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_modes_sample_from_their_own_streams_and_secure_mode_is_not_seeded():
    """At k = 1 and the same q, shared uniforms would make the ULS cohort and the ELS sample the same users
    at every step; from separate streams they differ. Secure mode: two runs with one seed differ."""
    spec = me.TaskSpec(num_users=400, dim=4)
    pop = me.Population(spec, 0)
    q, steps = 0.05, 5
    uls = me.train(pop, "uls", 1, q, 0.0, 1.0, np.inf, steps=steps, seed=0)
    els = me.train(pop, "els", 1, q, 0.0, 1.0, np.inf, steps=steps, seed=0)
    assert not np.allclose(uls.thetas, els.thetas)          # σ = 0: equal only if they sampled alike
    again = me.train(pop, "els", 1, q, 0.0, 1.0, np.inf, steps=steps, seed=0)
    np.testing.assert_array_equal(again.thetas, els.thetas)
    a = me.train(pop, "uls", 1, q, 1.0, 1.0, 1.0, steps=steps, seed=0, secure_mode=True)
    b = me.train(pop, "uls", 1, q, 1.0, 1.0, 1.0, steps=steps, seed=0, secure_mode=True)
    assert not np.array_equal(a.thetas, b.thetas)
