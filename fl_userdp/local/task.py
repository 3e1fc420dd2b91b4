"""Your own task: `model.name = "package.module:factory"` — any torch module and per-example loss.

**The factory.** `factory(cfg)` gets the parsed `RunConfig` and returns a
task: any object with

* `module` — a `torch.nn.Module`; its parameters with `requires_grad` are the
  trainable weights exchanged with the server (`named_parameters` order);
* `loss(module, batch)` — a `(b,)` tensor, the loss of each row of `batch`
  (a tensor made from `b` rows of the corpus' examples, on the module's
  device, dtype as stored). Row i's loss must depend on row i only: the
  framework batches rows of several users together and clips per row (ELS)
  or per user (ULS);
* `corpus` (optional, default: the config's data loader, `data.source`) —
  the user-partitioned data: `num_users`, `counts` (examples per user),
  `examples_of(user, ids)` (the rows `ids` of user `user`, a numpy array of
  shape `(len(ids), ...)`, deterministic) and `heldout()` (rows of users that
  are never trained on; evaluation).

`Task(module, loss, corpus=None)` below is such an object. Every process (the
server for the initial weights, each node) calls the factory once per
(`model.*`, `data.*`, `seed`) and must get the same task — frozen weights and
data included — so the factory should read only those keys and derive all
randomness from `cfg.seed` (torch's global generator is seeded with it around
the call). The module is moved to `model.device` and dropout is switched off
(p = 0), as for the built-in models, so a node's sums are deterministic
functions of the data and the weights. The module itself is found on
`sys.path` or, failing that, in the current directory.

**LoRA.** With `model.lora-targets` naming modules (comma-separated, not
`auto`), the framework injects LoRA adapters (`model.lora-rank`,
`model.lora-alpha`) into those modules of `module` and only the adapters
train; with the default `auto` nothing is wrapped.

**Per-example gradients** come from opacus' `GradSampleModule` (attached for
each call only), which covers linear, conv, embedding, normalisation and
other layers (and functorch for the rest). Layers that mix the examples of a
batch (BatchNorm) are refused when the task loads (opacus' `ModuleValidator`):
their per-example gradients would depend on other users' data. So are torch's
RNN layers (`nn.LSTM`, `nn.GRU`, `nn.RNN`), whose fused kernels opacus cannot
hook: use `opacus.layers.DPLSTM` / `DPGRU` / `DPRNN` in their place.
`tests/local/test_task.py` compares them with batch-1 backward passes.

**The probe.** When the task loads, a few rows of the corpus (at most two of
each of its first users with examples) go through the loss twice: once as
they are, once with row 0 replaced by another row of the batch. The loss must
return one value per row, and no row but row 0 may move (beyond a relative
1e-6): a loss that mixes rows (minus the batch mean, a batch statistic) would
make per-example clipping bound nothing, and is refused. The probe leaves the
task as it found it: no gradients, the module's buffers put back, and torch's,
numpy's and Python's generators seeded for each call and restored after.

Bad input — a module that cannot be imported, a missing attribute, a factory
that raises or returns something else, a loss of the wrong shape on the probe
batch or one that mixes its rows, layers opacus refuses (its message whole) —
is a one-line `ConfigError` naming `model.name`.
"""
from __future__ import annotations

import importlib
import os
import random
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..config import RunConfig, is_task_spec
from ..errors import ConfigError
from .model import get_trainable, set_trainable, trainable_params
from .opacus_compat import import_opacus
from .pretrained import resolve_device
from .updates import add_by_user, clip_factors, from_grid_units, grid_units, padded_chunks

KEY = "model.name"
DEFAULT_CHUNK = 256
CORPUS_ATTRS = ("num_users", "counts", "examples_of", "heldout")


@dataclass
class Task:
    """What a factory returns (any object with these attributes will do)."""

    module: nn.Module
    loss: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    corpus: Any = None


@dataclass
class LoadedTask:
    """A task as the framework uses it: module (LoRA-wrapped if asked), loss, corpus, initial weights."""

    spec: str
    module: nn.Module
    loss: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    corpus: Any
    init_weights: list[np.ndarray]


_CACHE: dict[tuple, LoadedTask] = {}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{err.__class__.__name__}: {text[0][:200]}" if text else err.__class__.__name__


def _whole(err: BaseException) -> str:
    """The whole message of `err` on one line (its advice included)."""
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    return f"{err.__class__.__name__}: {text}" if text else err.__class__.__name__


def import_factory(spec: str) -> Callable[[RunConfig], Any]:
    """The callable `spec` ("package.module:factory") names. Modules are found on sys.path and, failing
    that, in the current directory (as `python -m` would), so a task in the repository runs from its root."""
    if not is_task_spec(spec):
        raise ConfigError(KEY, spec, "must be 'package.module:factory'")
    module_name, _, attr = spec.partition(":")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            cwd = os.getcwd()
            if err.name != module_name.split(".")[0] or cwd in sys.path or "" in sys.path:
                raise
            sys.path.append(cwd)  # Ray workers started from here inherit the driver's sys.path
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ConfigError(KEY, spec, f"cannot be imported ({_one_line(err)}; run from the folder that holds it "
                          "or add that folder to PYTHONPATH)") from None
    except Exception as err:  # noqa: BLE001 - anything the import raises is the user's module's problem
        raise ConfigError(KEY, spec, f"cannot be imported ({_one_line(err)})") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(KEY, spec, f"names nothing: module {module_name} has no attribute {attr!r}")
    if not callable(factory):
        raise ConfigError(KEY, spec, f"must name a callable factory ({attr!r} is not callable: "
                          f"{type(factory).__name__})")
    return factory


def _check_corpus(spec: str, corpus: Any) -> None:
    missing = [a for a in CORPUS_ATTRS if not hasattr(corpus, a)]
    if missing:
        raise ConfigError(KEY, spec, f"returned a corpus without {', '.join(missing)} (the user-partitioned "
                          "corpus interface: num_users, counts, examples_of(user, ids), heldout())")
    counts = np.asarray(corpus.counts)
    if counts.ndim != 1 or counts.size != int(corpus.num_users) or counts.size < 1 \
            or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
        raise ConfigError(KEY, spec, f"returned a corpus whose counts are not {int(corpus.num_users)} "
                          "non-negative integers (one per user, num_users >= 1)")


def _lora(cfg: RunConfig, module: nn.Module) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    m = cfg.model
    targets = [t.strip() for t in m.lora_targets.split(",") if t.strip()]
    config = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=0.0, target_modules=targets, bias="none")
    try:
        return inject_adapter_in_model(config, module)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError("model.lora-targets", m.lora_targets, f"cannot wrap the task's module in LoRA "
                          f"({_one_line(err)})") from None


PROBE_ROWS = 4
PROBE_RTOL = 1e-6


def _probe_rows(spec: str, corpus: Any) -> np.ndarray:
    """Up to PROBE_ROWS rows, at most two per user, from the first users with examples."""
    counts = np.asarray(corpus.counts)
    users = np.flatnonzero(counts > 0)
    if users.size == 0:
        raise ConfigError(KEY, spec, "returned a corpus whose users have no examples")
    parts, taken = [], 0
    for user in users[:PROBE_ROWS]:
        n = min(2, int(counts[user]), PROBE_ROWS - taken)
        if n <= 0:
            break
        try:
            parts.append(np.asarray(corpus.examples_of(int(user), np.arange(n))))
        except Exception as err:  # noqa: BLE001 - the user's corpus failed: one line
            raise ConfigError(KEY, spec, f"corpus.examples_of failed on user {int(user)} ({_one_line(err)})") from None
        taken += n
    return np.concatenate(parts)


@contextmanager
def _seeded_generators(module: nn.Module) -> Iterator[None]:
    """torch's (CPU and the module's GPU), numpy's and Python's global generators seeded with 0 for the block
    and restored after it: a loss that draws random numbers draws the same ones on every probe call, and the
    process' generators are as they were."""
    device = _device(module)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            np.random.seed(0)
            random.seed(0)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _losses(spec: str, module: nn.Module, loss, rows: np.ndarray) -> torch.Tensor:
    """The task's losses of `rows` (no gradients, generators seeded), checked to be a (b,) tensor."""
    try:
        with torch.no_grad(), _seeded_generators(module):
            out = loss(module, as_batch(module, rows))
    except Exception as err:  # noqa: BLE001 - the user's loss failed: one line
        raise ConfigError(KEY, spec, f"task failed on a probe batch of {len(rows)} rows ({_one_line(err)})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(rows),):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ConfigError(KEY, spec, f"loss(module, batch) must return a ({len(rows)},) tensor for a batch of "
                          f"{len(rows)} rows (one loss per example) but returned {got}")
    return out.detach().double().cpu()


def _check_rows_independent(spec: str, module: nn.Module, loss, rows: np.ndarray, base: torch.Tensor) -> None:
    """Replace row 0 by the row whose loss differs most from it; every other row's loss must stay put."""
    if len(rows) < 2:
        return
    other = 1 + int(torch.argmax((base[1:] - base[0]).abs()))
    changed = rows.copy()
    changed[0] = rows[other]
    moved = (_losses(spec, module, loss, changed) - base)[1:].abs()
    tol = PROBE_RTOL * torch.clamp(base[1:].abs(), min=1.0)
    if bool(torch.any(moved > tol)):
        i = 1 + int(torch.argmax(moved - tol))
        raise ConfigError(KEY, spec, f"has a loss in which row {i}'s loss depends on other rows of the batch (it "
                          f"moved by {float(moved[i - 1]):.3g} when only row 0 changed), so per-example clipping "
                          "bounds nothing; row i's loss must depend on row i only (no batch mean or other batch "
                          "statistic in the loss, no BatchNorm in train mode)")


def _probe(spec: str, module: nn.Module, loss, corpus: Any) -> None:
    """A few rows of the corpus through the loss: one loss per row, and each row's loss its own. The module's
    buffers (a forward in train mode may update them) are put back after; its weights do not move (no
    gradients) and the generators are restored (`_seeded_generators`)."""
    rows = _probe_rows(spec, corpus)
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    try:
        base = _losses(spec, module, loss, rows)
        _check_rows_independent(spec, module, loss, rows, base)
    finally:
        with torch.no_grad():
            for name, b in module.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])


def load_task(cfg: RunConfig) -> LoadedTask:
    """Import the factory, build the task under `cfg.seed`, validate it (ConfigError naming model.name)."""
    spec = cfg.model.name
    factory = import_factory(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        try:
            task = factory(cfg)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - the factory's own failure, reported in one line
            raise ConfigError(KEY, spec, f"factory failed ({_one_line(err)})") from None
        module, loss = getattr(task, "module", None), getattr(task, "loss", None)
        if not isinstance(module, nn.Module) or not callable(loss):
            raise ConfigError(KEY, spec, "factory must return a task with .module (a torch.nn.Module) and "
                              f".loss(module, batch) (it returned a {type(task).__name__})")
        module.to(resolve_device(cfg.model))  # before LoRA (opacus#820)
        if cfg.model.lora_targets.strip() not in ("", "auto"):
            module = _lora(cfg, module)
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0
    module.train()  # opacus' hooks record activations in train mode only
    if not trainable_params(module):
        raise ConfigError(KEY, spec, "task's module has no parameters with requires_grad (nothing to train)")
    _check_layers(spec, module)
    corpus = getattr(task, "corpus", None)
    if corpus is None:
        from ..data import load_corpus

        corpus = load_corpus(cfg.data, cfg.model, cfg.seed)
    _check_corpus(spec, corpus)
    _probe(spec, module, loss, corpus)
    return LoadedTask(spec, module, loss, corpus, get_trainable(module))


DP_LAYERS = {"GRU": "DPGRU", "LSTM": "DPLSTM", "RNN": "DPRNN"}


def _rnn_hint(module: nn.Module) -> str:
    """Which opacus.layers class replaces each torch RNN layer of `module` ('' when it has none)."""
    names = sorted({type(m).__name__ for m in module.modules()
                    if isinstance(m, nn.RNNBase) and type(m).__name__ in DP_LAYERS and type(m).__module__.startswith("torch.")})
    swaps = ", ".join(f"opacus.layers.{DP_LAYERS[n]} for nn.{n}" for n in names)
    return f"; use {swaps} (same arguments)" if swaps else ""


def _check_layers(spec: str, module: nn.Module) -> None:
    """opacus' ModuleValidator: layers without private per-example gradients are refused, its messages whole."""
    ModuleValidator = import_opacus("opacus.validators").ModuleValidator

    errors = ModuleValidator.validate(module, strict=False)
    if errors:
        raise ConfigError(KEY, spec, "has layers without private per-example gradients ("
                          + "; ".join(_whole(e) for e in errors) + _rnn_hint(module) + ")")


def cached_task(cfg: RunConfig) -> LoadedTask:
    """One task per (model, data, seed) per process: the factory is called once."""
    key = (cfg.model, cfg.data, int(cfg.seed))
    if key not in _CACHE:
        _CACHE[key] = load_task(cfg)
    return _CACHE[key]


# -- computations (flat float64 vectors in trainable order, as fl_userdp.local.updates) -------------------------
def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def as_batch(module: nn.Module, rows: np.ndarray) -> torch.Tensor:
    """Rows of examples as a tensor on the module's device (dtype as stored)."""
    return torch.as_tensor(np.ascontiguousarray(rows), device=_device(module))


def per_example_losses(task: LoadedTask, rows: np.ndarray, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """(b,) float64 losses at the module's current weights (no gradients)."""
    if len(rows) == 0:
        return np.zeros(0)
    with torch.no_grad():
        return torch.cat([task.loss(task.module, as_batch(task.module, rows[lo:lo + chunk_size])).reshape(-1)
                          for lo in range(0, len(rows), chunk_size)]).double().cpu().numpy()


def per_example_grads(task: LoadedTask, batch: torch.Tensor) -> list[torch.Tensor]:
    """Per-example gradients of the trainable weights, one (b, *shape) float32 tensor per array (opacus'
    GradSampleModule, attached for this call only)."""
    GradSampleModule = import_opacus().GradSampleModule

    module, params = task.module, [p for _, p in trainable_params(task.module)]
    b = int(batch.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        gsm = GradSampleModule(module, batch_first=True, loss_reduction="sum", strict=False)
        try:
            for p in params:
                p.grad, p.grad_sample = None, None
            with torch.enable_grad():
                losses = task.loss(module, batch)  # the hooks sit on the submodules: call the module itself
                if tuple(losses.shape) != (b,):
                    raise ValueError(f"{task.spec}: loss must return a ({b},) tensor, got {tuple(losses.shape)}")
                losses.sum().backward()
            out = []
            for (name, p) in trainable_params(module):
                gs = p.grad_sample
                if gs is None:
                    if p.grad is not None and bool(torch.any(p.grad != 0)):
                        raise RuntimeError(f"{task.spec}: opacus gave no per-example gradient for {name}")
                    gs = torch.zeros((b, *p.shape), device=p.device)
                out.append(gs.float())
            return out
        finally:
            gsm.remove_hooks()
            for p in params:
                p.grad, p.grad_sample = None, None


def els_clipped_sum(task: LoadedTask, rows: np.ndarray, clip_norm: float,
                    chunk_size: int = DEFAULT_CHUNK) -> tuple[np.ndarray, int]:
    """Σ_i clip(∇ loss_i, C) over `rows` at the current weights; (flat float64 sum, number clipped)."""
    params = [p for _, p in trainable_params(task.module)]
    total = [torch.zeros(p.numel(), dtype=torch.float64, device=p.device) for p in params]
    clipped = 0
    for _, n, batch in padded_chunks(rows, chunk_size):  # one shape for every forward (see padded_chunks)
        grads = [g[:n] for g in per_example_grads(task, as_batch(task.module, batch))]
        norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).double().pow(2).sum(dim=1) for g in grads))
        factors = clip_factors(norms, clip_norm)
        clipped += int((norms > clip_norm).sum())
        for acc, g in zip(total, grads):
            acc += grid_units(factors, g.reshape(g.shape[0], -1), clip_norm)
    return from_grid_units(total, clip_norm), clipped


def _local_steps(task: LoadedTask, rows: np.ndarray, start: list[np.ndarray], steps: int, lr: float,
                 batch_size: int) -> list[torch.Tensor]:
    """start − end after `steps` SGD steps on batches cycling over the user's rows (as the LM path)."""
    params = [p for _, p in trainable_params(task.module)]
    if len(rows) == 0:
        return [torch.zeros_like(p) for p in params]
    start_t = [p.detach().clone() for p in params]
    b = min(batch_size, len(rows))
    for step in range(steps):
        idx = np.arange(step * b, step * b + b) % len(rows)
        for p in params:
            p.grad = None
        with torch.enable_grad():
            task.loss(task.module, as_batch(task.module, rows[idx])).mean().backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= lr * p.grad
    update = [(s - p.detach()).float() for s, p in zip(start_t, params)]
    for p in params:
        p.grad = None
    set_trainable(task.module, start)
    return update


def uls_clipped_sum(task: LoadedTask, user_rows: list[np.ndarray], clip_norm: float, update: str,
                    local_steps: int, local_lr: float, batch_size: int, start: list[np.ndarray],
                    chunk_size: int = DEFAULT_CHUNK) -> tuple[np.ndarray, int, list[float]]:
    """Σ_u clip(Δ_u, C): Δ_u the mean gradient over user u's rows (update="gradient", all users batched,
    per-example gradients summed per user) or start − end after local SGD steps ("local-steps").
    Returns (flat float64 sum, users clipped, per-user norms); the weights are left at `start`."""
    set_trainable(task.module, start)
    params = [p for _, p in trainable_params(task.module)]
    if not user_rows:
        return np.zeros(sum(p.numel() for p in params)), 0, []
    if update == "gradient":
        counts = np.array([len(r) for r in user_rows])
        per_user = [torch.zeros((len(user_rows), p.numel()), dtype=torch.float64, device=p.device) for p in params]
        nonempty = [r for r in user_rows if len(r)]
        if nonempty:
            stacked = np.concatenate(nonempty)
            owner = np.repeat(np.arange(len(user_rows)), counts)
            rank = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
            for lo, n, batch in padded_chunks(stacked, chunk_size):
                grads = [g[:n] for g in per_example_grads(task, as_batch(task.module, batch))]
                add_by_user(per_user, grads, owner[lo:lo + n], rank[lo:lo + n])
        denom = torch.as_tensor(np.maximum(counts, 1), dtype=torch.float64, device=params[0].device)
        per_user = [u / denom[:, None] for u in per_user]
    elif update == "local-steps":
        deltas = [_local_steps(task, r, start, local_steps, local_lr, batch_size) for r in user_rows]
        per_user = [torch.stack([d[j].reshape(-1) for d in deltas]).double() for j in range(len(params))]
    else:
        raise ValueError(f"update must be 'gradient' or 'local-steps', got {update!r}")
    norms = torch.sqrt(sum(u.pow(2).sum(dim=1) for u in per_user))
    factors = clip_factors(norms, clip_norm)
    total = [grid_units(factors, u, clip_norm) for u in per_user]
    return from_grid_units(total, clip_norm), int((norms > clip_norm).sum()), [float(x) for x in norms.cpu()]


def eval_loss(task: LoadedTask, rows: np.ndarray) -> float:
    """Mean per-example loss over `rows` (nan when there are none)."""
    losses = per_example_losses(task, rows)
    return float(losses.mean()) if losses.size else float("nan")


__all__ = ["Task", "LoadedTask", "import_factory", "load_task", "cached_task", "per_example_losses",
           "per_example_grads", "els_clipped_sum", "uls_clipped_sum", "eval_loss", "as_batch"]
