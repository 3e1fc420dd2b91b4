"""Your own task (`model.name = "package.module:factory"`): loading, and opacus' per-example gradients of
the worked example (embedding, linear, LayerNorm) against batch-1 backward passes."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from fl_userdp.config import parse_config  # noqa: E402
from fl_userdp.errors import ConfigError  # noqa: E402
from fl_userdp.local.model import get_trainable, set_trainable, trainable_params, trainable_shapes  # noqa: E402
from fl_userdp.local.task import (els_clipped_sum, eval_loss, load_task, per_example_grads,  # noqa: E402
                                  per_example_losses, uls_clipped_sum, as_batch)

ROOT = Path(__file__).resolve().parents[2]
SPEC = "experiments.custom_task.tabular:make_task"
BASE = {"model.name": SPEC, "model.hidden-size": 16, "data.num-users": 64, "data.heldout-users": 4}


@pytest.fixture(scope="module")
def task():
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)  # the example is found from the repository root (as `fl-userdp` run there finds it)
    try:
        return load_task(parse_config(BASE))
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def rows(task):
    users = [u for u in range(task.corpus.num_users) if task.corpus.counts[u] >= 2][:5]
    return np.concatenate([task.corpus.examples_of(u, np.arange(2)) for u in users])  # 10 rows of 5 users


def flat_grad(task, rows):
    """Flat float64 gradient of the mean loss over `rows` (plain autograd)."""
    params = [p for _, p in trainable_params(task.module)]
    for p in params:
        p.grad = None
    task.loss(task.module, as_batch(task.module, rows)).mean().backward()
    g = np.concatenate([(p.grad if p.grad is not None else torch.zeros_like(p)).double().numpy().ravel()
                        for p in params])
    for p in params:
        p.grad = None
    return g


def clip(v, c):
    n = np.linalg.norm(v)
    return v * min(1.0, c / n), n


def test_factory_loads_with_the_trainable_shapes(task):
    h = 16
    assert trainable_shapes(task.module) == [(8, 4), (h, 12 + 4), (h,), (h,), (h,), (4, h), (4,)]
    assert [a.shape for a in task.init_weights] == trainable_shapes(task.module)
    assert task.corpus.num_users == 64 and len(task.corpus.counts) == 64 and task.corpus.heldout().shape[1] == 14
    again = load_task(parse_config(BASE))  # every process builds the same task from the seed
    assert all(np.array_equal(a, b) for a, b in zip(task.init_weights, again.init_weights))
    other = load_task(parse_config({**BASE, "seed": 1}))
    assert not np.array_equal(task.init_weights[1], other.init_weights[1])


def test_opacus_per_example_grads_equal_batch1_backward(task, rows):
    grads = per_example_grads(task, as_batch(task.module, rows))
    flat = torch.cat([g.reshape(len(rows), -1) for g in grads], dim=1).double().numpy()
    ref = np.stack([flat_grad(task, rows[i:i + 1]) for i in range(len(rows))])
    assert np.abs(ref[:, :32]).sum() > 0  # the embedding's rows of the used categories
    np.testing.assert_allclose(flat, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
    assert all(p.grad is None and getattr(p, "grad_sample", None) is None for _, p in trainable_params(task.module))


def test_els_clipped_sum_matches_batch1_loop(task, rows):
    grads = [flat_grad(task, rows[i:i + 1]) for i in range(len(rows))]
    norms = np.array([np.linalg.norm(g) for g in grads])
    c = float(np.median(norms))
    ref = sum(clip(g, c)[0] for g in grads)
    start = get_trainable(task.module)
    got, n_clipped = els_clipped_sum(task, rows, c, chunk_size=4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
    assert n_clipped == int((norms > c).sum())
    assert all(np.array_equal(a, b) for a, b in zip(start, get_trainable(task.module)))


def test_uls_is_mean_grad_then_clip_and_local_step_is_lr_times_grad(task, rows):
    users = [rows[:1], rows[1:4], rows[4:10]]
    start = get_trainable(task.module)
    means = [flat_grad(task, u) for u in users]
    lo, mid, _ = sorted(np.linalg.norm(g) for g in means)
    c = float(lo + mid) / 2
    refs = [clip(g, c) for g in means]
    got, n_clipped, norms = uls_clipped_sum(task, users, c, "gradient", 1, 0.1, 8, start, chunk_size=4)
    ref = sum(r[0] for r in refs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(norms, [r[1] for r in refs], rtol=1e-4)
    assert n_clipped == sum(r[1] > c for r in refs)
    lr = 0.3
    ls, _, _ = uls_clipped_sum(task, users, 100.0, "local-steps", 1, lr, 8, start)
    g, _, _ = uls_clipped_sum(task, users, 100.0, "gradient", 1, lr, 8, start)
    np.testing.assert_allclose(ls, lr * g, rtol=1e-3, atol=1e-4 * np.abs(lr * g).max())
    assert all(np.array_equal(a, b) for a, b in zip(start, get_trainable(task.module)))


def test_eval_loss_is_the_mean_per_example_loss(task, rows):
    losses = per_example_losses(task, rows, chunk_size=3)
    assert losses.shape == (len(rows),) and eval_loss(task, rows) == pytest.approx(losses.mean(), rel=1e-6)
    assert np.isnan(eval_loss(task, rows[:0]))


def test_lora_targets_wrap_the_tasks_module(task, rows):
    lora = load_task(parse_config({**BASE, "model.lora-targets": "hidden,out", "model.lora-rank": 2}))
    names = [n for n, _ in trainable_params(lora.module)]
    assert names and all("lora_" in n for n in names) and len(names) == 4
    set_trainable(lora.module, [a + 0.1 for a in get_trainable(lora.module)])  # B ≠ 0: every adapter has a gradient
    grads = per_example_grads(lora, as_batch(lora.module, rows))
    flat = torch.cat([g.reshape(len(rows), -1) for g in grads], dim=1).double().numpy()
    ref = np.stack([flat_grad(lora, rows[i:i + 1]) for i in range(len(rows))])
    np.testing.assert_allclose(flat, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


# -- factories that must be refused -------------------------------------------------------------------------
def batchnorm_task(cfg):
    from experiments.custom_task.tabular import make_task

    task = make_task(cfg)
    task.module.norm = torch.nn.BatchNorm1d(cfg.model.hidden_size)  # mixes the examples of a batch
    return task


def mean_loss_task(cfg):
    from experiments.custom_task.tabular import make_task

    task = make_task(cfg)
    inner = task.loss
    task.loss = lambda module, batch: inner(module, batch).mean()  # a scalar, not one loss per example
    return task


def minus_batch_mean_task(cfg):
    from experiments.custom_task.tabular import make_task

    task = make_task(cfg)
    inner = task.loss
    task.loss = lambda module, batch: inner(module, batch) - inner(module, batch).mean()  # (b,), but mixes rows
    return task


def gru_task(cfg):
    from experiments.custom_task.tabular import make_task

    task = make_task(cfg)
    task.module.rnn = torch.nn.GRU(4, 4)  # fused kernels: no opacus hooks
    return task


def dp_gru_task(cfg):
    from opacus.layers import DPGRU

    from experiments.custom_task.tabular import make_task

    task = make_task(cfg)
    task.module.rnn = DPGRU(4, 4)  # opacus' replacement: accepted (unused by the loss here)
    return task


def random_loss_task(cfg):
    from experiments.custom_task.tabular import make_task

    task = make_task(cfg)
    inner = task.loss
    task.loss = lambda module, batch: inner(module, batch) + 1e-3 * torch.rand(batch.shape[0])  # per-row noise
    return task


@pytest.mark.parametrize("factory,needle", [
    ("batchnorm_task", "BatchNorm"),
    ("mean_loss_task", "must return a (4,) tensor for a batch of 4 rows (one loss per example) but returned shape ()"),
    ("minus_batch_mean_task", "loss depends on other rows of the batch"),
    ("gru_task", "Please run the recommended replacement!; use opacus.layers.DPGRU for nn.GRU"),
])
def test_tasks_without_per_example_losses_are_refused(task, factory, needle):
    with pytest.raises(ConfigError) as err:
        load_task(parse_config({**BASE, "model.name": f"{__name__}:{factory}"}))
    assert err.value.key == "model.name" and needle in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).count("got") == 1  # ConfigError's own ", got <value>" only


def test_opacus_refusals_are_shown_whole(task):
    with pytest.raises(ConfigError) as err:
        load_task(parse_config({**BASE, "model.name": f"{__name__}:batchnorm_task"}))
    assert "pretrained on ImageNet" in str(err.value)  # the end of opacus' advice, far beyond 200 characters


@pytest.mark.parametrize("factory", ["dp_gru_task", "random_loss_task"])
def test_row_independent_tasks_pass_the_probe(task, factory):
    assert load_task(parse_config({**BASE, "model.name": f"{__name__}:{factory}"})).module is not None
