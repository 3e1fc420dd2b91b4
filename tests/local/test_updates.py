"""Clipped sums against hand-written references (batch-1 backward loops, mean-grad-then-clip)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from fl_userdp.config import ModelConfig  # noqa: E402
from fl_userdp.local import (build_model, els_clipped_sum, eval_loss, get_trainable, per_example_loss,  # noqa: E402
                             set_trainable, trainable_shapes, uls_clipped_sum)
from fl_userdp.local.model import trainable_params  # noqa: E402

CFG = ModelConfig()


@pytest.fixture(scope="module")
def model():
    m = build_model(CFG, 0)
    rng = np.random.default_rng(1)  # move B away from 0 so that every adapter weight has a gradient
    set_trainable(m, [a + 0.05 * rng.standard_normal(a.shape).astype(np.float32) for a in get_trainable(m)])
    return m


@pytest.fixture(scope="module")
def examples():
    return np.random.default_rng(2).integers(0, CFG.vocab_size, (10, CFG.seq_len))


def grad_of(model, tokens):
    """Flat float64 gradient of the mean per-example loss over `tokens` (plain autograd)."""
    params = [p for _, p in trainable_params(model)]
    for p in params:
        p.grad = None
    per_example_loss(model, torch.as_tensor(tokens)).mean().backward()
    g = np.concatenate([p.grad.double().numpy().ravel() for p in params])
    for p in params:
        p.grad = None
    return g


def clip(v, c):
    n = np.linalg.norm(v)
    return v * min(1.0, c / n), n


@pytest.mark.parametrize("method", ["hooks", "opacus"])
def test_els_matches_batch1_loop(model, examples, method):
    grads = [grad_of(model, examples[i:i + 1]) for i in range(len(examples))]
    norms = np.array([np.linalg.norm(g) for g in grads])
    c = float(np.median(norms))  # about half clipped
    ref = sum(clip(g, c)[0] for g in grads)
    start = get_trainable(model)
    got, n_clipped = els_clipped_sum(model, examples, c, chunk_size=4, method=method)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-7 * np.abs(ref).max())
    assert n_clipped == int((norms > c).sum())
    assert all(np.array_equal(a, b) for a, b in zip(start, get_trainable(model)))
    assert all(p.grad is None for _, p in trainable_params(model))
    empty, zero = els_clipped_sum(model, examples[:0], c)
    assert zero == 0 and empty.shape == ref.shape and not empty.any()


def test_uls_gradient_mode_is_mean_grad_then_clip(model, examples):
    users = [examples[:1], examples[1:4], examples[4:10]]
    start = get_trainable(model)
    means = [grad_of(model, u) for u in users]
    lo, mid, _ = sorted(np.linalg.norm(g) for g in means)
    c = float(lo + mid) / 2  # one user unclipped, two clipped, none at the boundary
    refs = [clip(g, c) for g in means]
    got, n_clipped, norms = uls_clipped_sum(model, users, c, "gradient", 1, 0.1, 8, start, chunk_size=4)
    ref = sum(r[0] for r in refs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())  # float32 sums
    np.testing.assert_allclose(norms, [r[1] for r in refs], rtol=1e-4)
    assert n_clipped == sum(r[1] > c for r in refs)


def test_local_steps_tau1_is_lr_times_gradient(model, examples):
    users = [examples[:3], examples[3:8]]
    start = get_trainable(model)
    lr, big = 0.3, 100.0  # above every norm; the grid unit is C·2^-30
    g, _, _ = uls_clipped_sum(model, users, big, "gradient", 1, lr, 8, start)
    ls, n_clipped, _ = uls_clipped_sum(model, users, big, "local-steps", 1, lr, 8, start)
    # start - end is formed in float32: absolute rounding ~ eps * |weights|
    np.testing.assert_allclose(ls, lr * g, rtol=1e-4, atol=1e-4 * np.abs(lr * g).max())
    assert n_clipped == 0
    assert all(np.array_equal(a, b) for a, b in zip(start, get_trainable(model)))


def test_local_steps_matches_hand_sgd(model, examples):
    user = examples[:5]
    start = get_trainable(model)
    lr, tau, b = 0.2, 3, 2
    w = [a.astype(np.float64) for a in start]
    for step in range(tau):  # batches cycle over the user's examples: [0,1], [2,3], [4,0]
        idx = np.arange(step * b, step * b + b) % len(user)
        set_trainable(model, [a.astype(np.float32) for a in w])
        gf = grad_of(model, user[idx])
        off = 0
        for i, a in enumerate(w):
            w[i] = a - lr * gf[off:off + a.size].reshape(a.shape)
            off += a.size
    delta = np.concatenate([(s - e).ravel() for s, e in zip(start, w)])
    set_trainable(model, start)
    got, _, norms = uls_clipped_sum(model, [user], 100.0, "local-steps", tau, lr, b, start)
    np.testing.assert_allclose(got, delta, rtol=1e-3, atol=1e-4 * np.abs(delta).max())
    c = norms[0] / 2
    clipped, n_clipped, _ = uls_clipped_sum(model, [user], c, "local-steps", tau, lr, b, start)
    np.testing.assert_allclose(np.linalg.norm(clipped), c, rtol=1e-6)
    assert n_clipped == 1


def test_eval_loss(model, examples):
    with torch.no_grad():
        ref = float(per_example_loss(model, torch.as_tensor(examples)).mean())
    assert eval_loss(model, examples, batch_size=3) == pytest.approx(ref, rel=1e-5)
    assert 3.0 < ref < 8.0
    assert np.isnan(eval_loss(model, examples[:0]))
    assert len(trainable_shapes(model)) == 2 * 7 * CFG.num_layers  # A, B on q,k,v,o,gate,up,down


def test_pad_targets_are_ignored(model):
    """With pad_id, the EOS padding of a user's last packed row is neither trained on nor evaluated."""
    from fl_userdp.data.text import pad_mask
    from fl_userdp.local.updates import target_mask

    eos, L = CFG.vocab_size - 1, CFG.seq_len
    rng = np.random.default_rng(3)
    full = rng.integers(0, eos, (2, L))
    full[1, -1] = eos                                   # a text that ends exactly at the row end: no padding
    short = rng.integers(0, eos, (1, L))
    short[0, 10:] = eos                                 # text + EOS at 10, padding after it
    rows = np.concatenate([full, short])
    mask = target_mask(torch.as_tensor(rows), eos).numpy()
    np.testing.assert_array_equal(mask, ~pad_mask(rows, eos)[:, 1:])
    assert mask[2, :10].all() and not mask[2, 10:].any()   # target at 10 (the ending EOS) counts
    with torch.no_grad():
        plain = per_example_loss(model, torch.as_tensor(rows)).numpy()
        masked = per_example_loss(model, torch.as_tensor(rows), eos).numpy()
        ref = per_example_loss(model, torch.as_tensor(short[:, :11])).numpy()   # the real part only
    np.testing.assert_allclose(masked[:2], plain[:2], rtol=1e-6)
    np.testing.assert_allclose(masked[2], ref[0], rtol=1e-5)
    want = (plain[:2].sum() * (L - 1) + ref[0] * 10) / (2 * (L - 1) + 10)        # per-token mean
    assert eval_loss(model, rows, batch_size=2, pad_id=eos) == pytest.approx(want, rel=1e-5)
    g_pad, _ = els_clipped_sum(model, short, 100.0, pad_id=eos)
    g_cut, _ = els_clipped_sum(model, short[:, :11], 100.0)
    np.testing.assert_allclose(g_pad, g_cut, rtol=1e-4, atol=1e-4 * np.abs(g_cut).max())  # float32 sums
