"""Clipped client contributions: per-user updates (ULS) and per-example gradients (ELS).

Loss: causal LM loss of one example = mean next-token cross entropy over its
predicted positions. Without `pad_id` every one of the seq_len - 1 positions
counts (a batch mean of per-example losses is then also the per-token mean).
With `pad_id` (the corpus' EOS id; `TextCorpus` packs each user's texts and
pads only the user's last row with EOS) the targets that are padding — the
tokens after the first EOS of a row's trailing run of EOS, exactly
`fl_userdp.data.text.pad_mask` — are ignored, so nobody trains on (and the
held-out loss does not count) the trivial EOS -> EOS predictions of the pads;
the EOS that ends the text is still a target. Every function below takes
`pad_id` (default None: all positions count) and passes it down.

Per-example gradients of the LoRA weights take one forward + one backward.
Default (`method="hooks"`): our own forward hooks on the trainable linear
layers keep their inputs and hook their outputs' gradients; per-example weight
gradients are one einsum each (opacus' Linear rule, without opacus'
module-level full backward hooks: ~1.05-1.1x a plain backward instead of
~1.2x, see experiments/bench_els_step.py). `method="opacus"` uses opacus'
`GradSampleModule` (attached for the call only). Because opacus + peft has a silent-corruption report (opacus#820:
a device move after `get_peft_model`; we move before), the tests compare both
methods with a loop of batch-1 backward passes.

Every per-example-gradient forward has exactly `chunk_size` rows
(`train.physical-batch-size`; a short chunk is padded with copies of its first
row, `padded_chunks`) and a user's rows are summed one at a time in their order
(`add_by_user`): kernels are chosen by shape, so this is what makes a record's
clipped gradient — and so a node's exact grid sum — the same bits whatever
`sim.users-per-node` or the backend puts beside it, in every precision.

Every returned vector is flat float64 in the order of `model.get_trainable`
(see `fl_userdp.local.model`).
"""
from __future__ import annotations

import warnings
import weakref
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fl_userdp.mechanism.fixed_point import grid_exponent, grid_loss, record_clip_norm

from .model import get_trainable, set_trainable, trainable_params
from .opacus_compat import import_opacus

DEFAULT_CHUNK = 64
DEFAULT_METHOD = "hooks"


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def as_tokens(model: nn.Module, examples: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(examples, dtype=np.int64), device=_device(model))


def target_mask(tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor | None:
    """(b, seq_len - 1) float: 1 where the next-token target is real text (or the ending EOS), 0 at padding.

    Padding = positions after the first EOS of a row's trailing run of `pad_id`
    (same rule as `fl_userdp.data.text.pad_mask`). None when `pad_id` is None.
    """
    if pad_id is None:
        return None
    is_pad = tokens == int(pad_id)
    run = torch.cumprod(is_pad.flip(1).to(torch.int64), dim=1).sum(dim=1)       # trailing run length
    pos_from_end = torch.arange(tokens.shape[1] - 1, -1, -1, device=tokens.device)
    padding = pos_from_end[None, :] < (run[:, None] - 1)
    return (~padding[:, 1:]).float()


def per_example_loss(model: nn.Module, tokens: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
    """(b,) mean next-token cross entropy of each example (over its non-padding targets when pad_id is set)."""
    logits = model(input_ids=tokens).logits[:, :-1].float()
    targets = tokens[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    ce = ce.view(targets.shape)
    mask = target_mask(tokens, pad_id)
    if mask is None:
        return ce.mean(dim=1)
    return (ce * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class _LinearGradSampler:
    """Per-example gradients of trainable `nn.Linear` weights via forward hooks + output-tensor hooks.

    While active, every forward of a trainable linear layer keeps its input x
    (b, ..., in) and its output; `torch.autograd.grad` w.r.t. those outputs
    then gives the output gradients g (b, ..., out) without computing the batch
    weight gradients, and the per-example weight gradient is
    Σ_t g[b, t] ⊗ x[b, t] (one einsum; bias: Σ_t g[b, t]). A layer used more
    than once per forward accumulates. This is opacus' Linear grad sampler
    without its module-level full backward hooks, which cost ~10% of a step.
    """

    def __init__(self, model: nn.Module) -> None:
        self.active = False
        self.float32 = False  # under autocast: form each per-example gradient from float32 g and x
        self.store: dict[nn.Parameter, torch.Tensor] = {}
        self.records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        covered = set()
        for module in model.modules():
            if isinstance(module, nn.Linear) and any(p.requires_grad for p in module.parameters(recurse=False)):
                module.register_forward_hook(self._forward_hook)
                covered.update(id(p) for p in module.parameters(recurse=False))
        missing = [n for n, p in trainable_params(model) if id(p) not in covered]
        if missing:
            raise NotImplementedError(f"per-example gradients via hooks support nn.Linear only; "
                                      f"not {missing[:3]} (use method='opacus')")

    def _forward_hook(self, module: nn.Linear, inputs, output: torch.Tensor) -> None:
        if not self.active or not torch.is_grad_enabled() or not output.requires_grad:
            return
        x = inputs[0].detach()
        self.records.append((module, x.reshape(x.shape[0], -1, x.shape[-1]), output))

    def accumulate(self, module: nn.Linear, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Per-example weight (and bias) gradients of one use of `module` from its output gradient."""
        g = grad.reshape(grad.shape[0], -1, grad.shape[-1])
        if self.float32:
            g, x = g.float(), x.float()
        if module.weight.requires_grad:
            self._add(module.weight, torch.einsum("bto,bti->boi", g, x.to(g.dtype)))
        if module.bias is not None and module.bias.requires_grad:
            self._add(module.bias, g.sum(dim=1))

    def _add(self, p: nn.Parameter, gs: torch.Tensor) -> None:
        prev = self.store.get(p)
        self.store[p] = gs if prev is None else prev + gs


_HOOKS: "weakref.WeakKeyDictionary[nn.Module, _LinearGradSampler]" = weakref.WeakKeyDictionary()


def _hook_sampler(model: nn.Module) -> _LinearGradSampler:
    sampler = _HOOKS.get(model)
    if sampler is None:
        sampler = _HOOKS[model] = _LinearGradSampler(model)
    return sampler


def _autocast(tokens: torch.Tensor, autocast: bool):
    """bfloat16 autocast of the forward on the tokens' device (a no-op context when off)."""
    return torch.autocast(device_type=tokens.device.type, dtype=torch.bfloat16, enabled=bool(autocast))


def _grads_hooks(model: nn.Module, tokens: torch.Tensor, params: list[nn.Parameter],
                 pad_id: int | None = None, autocast: bool = False,
                 losses: list | None = None) -> list[torch.Tensor]:
    sampler = _hook_sampler(model)
    sampler.active, sampler.store, sampler.records = True, {}, []
    sampler.float32 = bool(autocast)
    try:
        with torch.enable_grad():
            with _autocast(tokens, autocast):
                per = per_example_loss(model, tokens, pad_id)
                loss = per.sum()
            if losses is not None:
                losses.append(per.detach().double())
            # Gradients w.r.t. the trainable layers' outputs only: autograd then skips the batch
            # weight gradients a plain backward would also compute (we only need per-example ones).
            outs = [out for _, _, out in sampler.records]
            grads = torch.autograd.grad(loss, outs, allow_unused=True) if outs else []
        for (module, x, _), grad in zip(sampler.records, grads):
            if grad is not None:
                sampler.accumulate(module, x, grad)
        return [sampler.store.get(p, torch.zeros((tokens.shape[0], *p.shape), device=p.device)).float()
                for p in params]
    finally:
        sampler.active, sampler.store, sampler.records = False, {}, []


def _grads_opacus(model: nn.Module, tokens: torch.Tensor, params: list[nn.Parameter],
                  pad_id: int | None = None, autocast: bool = False,
                  losses: list | None = None) -> list[torch.Tensor]:
    """opacus GradSampleModule, attached for this call only (its disabled hooks would still slow
    and warn in plain backward passes of the shared model)."""
    GradSampleModule = import_opacus().GradSampleModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
        try:
            for p in params:
                p.grad_sample = None
            with torch.enable_grad():
                with _autocast(tokens, autocast):
                    per = per_example_loss(gsm, tokens, pad_id)
                if losses is not None:
                    losses.append(per.detach().double())
                per.sum().backward()
            return [(p.grad_sample if p.grad_sample is not None
                     else torch.zeros((tokens.shape[0], *p.shape), device=p.device)).float() for p in params]
        finally:
            gsm.remove_hooks()
            for p in params:
                p.grad_sample = None


def per_example_grads(model: nn.Module, tokens: torch.Tensor, method: str = DEFAULT_METHOD,
                      pad_id: int | None = None, autocast: bool = False,
                      losses: list | None = None) -> list[torch.Tensor]:
    """Per-example gradients of the trainable weights: one (b, *shape) float32 tensor per array.

    method="hooks" (default, fastest: ~1.05-1.1x a plain backward) or "opacus"
    (opacus GradSampleModule, ~1.2x). Both are checked against batch-1 loops in tests.
    autocast=True runs the forward (and so the backward) under bfloat16 autocast on the tokens' device
    (`model.autocast = "bf16"`); with "hooks" each per-example gradient is formed in float32 from the
    bf16 activations and output gradients, and their norms, the clipping and the sums are float32
    (float64 for ULS's per-user sum). With "opacus" opacus forms them in bfloat16 before the float32 cast.
    `losses`: when a list, the (b,) per-example losses of the same forward are appended to it (float64,
    detached) — the training loss comes with the gradients, no second forward.
    """
    params = [p for _, p in trainable_params(model)]
    model.train()
    for p in params:
        p.grad = None
    try:
        if method == "hooks":
            return _grads_hooks(model, tokens, params, pad_id, autocast, losses)
        if method == "opacus":
            return _grads_opacus(model, tokens, params, pad_id, autocast, losses)
        raise ValueError(f"method must be 'hooks' or 'opacus', got {method!r}")
    finally:
        for p in params:
            p.grad = None


def flat_numpy(tensors: list[torch.Tensor]) -> np.ndarray:
    """The tensors flattened and concatenated, as one float64 numpy vector on the host."""
    if not tensors:
        return np.zeros(0)
    return torch.cat([t.reshape(-1) for t in tensors]).to("cpu", torch.float64).numpy()


def padded_chunks(rows: np.ndarray, size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(lo, n, batch): rows lo..lo+n of `rows` in chunks of `size`, each batch exactly `size` rows (a short
    chunk filled up with copies of its first row, whose results the caller drops).

    A record's per-example gradient must not depend on which other records share its batch, or a node's sum
    (and the noise keyed by the round's sum) would change with `sim.users-per-node` or the backend. Kernels are
    chosen by shape: under bfloat16 autocast on CPU a 16-row matmul rounds differently from a 1,024-row one
    (and float32 ones differ at 1 row), so a user alone on its node got other bits than in a full chunk. With
    one shape for every call, a row's result depends on that row only (tests/server/test_sharding_bits.py
    checks positions, neighbours and thread counts); the cost is up to size − 1 padded rows per node and round
    (`train.physical-batch-size`).
    """
    for lo in range(0, len(rows), size):
        batch = rows[lo:lo + size]
        n = len(batch)
        if n < size:
            batch = np.concatenate([batch, np.repeat(batch[:1], size - n, axis=0)])
        yield lo, n, batch


def add_by_user(sums: list[torch.Tensor], grads: list[torch.Tensor], owner: np.ndarray, rank: np.ndarray) -> None:
    """sums[j][owner[i]] += grads[j][i] for every row i, a user's rows added one at a time in `rank` order.

    The same float additions in the same order wherever chunk boundaries fall (`index_add_` may group a user's
    rows, and adds atomically in any order on CUDA): one pass per rank, one row per user in each."""
    device = sums[0].device if sums else None
    for r in np.unique(rank):
        rows = np.flatnonzero(rank == r)
        dst, src = torch.as_tensor(owner[rows], device=device), torch.as_tensor(rows, device=device)
        for acc, g in zip(sums, grads):
            acc[dst] += g.reshape(g.shape[0], -1)[src].to(acc.dtype)


def chunk_grads(model: nn.Module, examples: np.ndarray, chunk_size: int = DEFAULT_CHUNK,
                method: str = DEFAULT_METHOD, pad_id: int | None = None, autocast: bool = False,
                losses: list | None = None) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """(lo, per-example gradients of rows lo.. of `examples`), every forward exactly `chunk_size` rows
    (`padded_chunks`); `losses` as in `per_example_grads`, the real rows' only."""
    for lo, n, rows in padded_chunks(np.asarray(examples, dtype=np.int64), chunk_size):
        own = [] if losses is not None else None
        grads = per_example_grads(model, as_tokens(model, rows), method, pad_id, autocast, own)
        if losses is not None:
            losses.extend(loss[:n] for loss in own)
        yield lo, [g[:n] for g in grads]


def els_clipped_sum(model: nn.Module, examples: np.ndarray, clip_norm: float,
                    chunk_size: int = DEFAULT_CHUNK, method: str = DEFAULT_METHOD,
                    pad_id: int | None = None, autocast: bool = False,
                    losses: list | None = None, grid_check: list | None = None) -> tuple[np.ndarray, int]:
    """Σ_i clip(∇ loss_i, C) over the rows of `examples`, at the model's current weights.

    Returns (flat float64 sum, number of examples whose gradient norm exceeded C); `losses` as in
    `per_example_grads`; `grid_check`: when a list, the sum's `grid_loss` is appended to it.
    """
    examples = np.asarray(examples, dtype=np.int64)
    params = [p for _, p in trainable_params(model)]
    total = [torch.zeros(p.numel(), dtype=torch.float64, device=p.device) for p in params]
    raw = [torch.zeros_like(t) for t in total] if grid_check is not None else [None] * len(total)
    clipped = 0
    for _, grads in chunk_grads(model, examples, chunk_size, method, pad_id, autocast, losses):
        norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).double().pow(2).sum(dim=1) for g in grads))
        factors = clip_factors(norms, clip_norm)
        clipped += int((norms > clip_norm).sum())
        for acc, r, g in zip(total, raw, grads):
            acc += grid_units(factors, g.reshape(g.shape[0], -1), clip_norm, r)
    if grid_check is not None:
        grid_check.append(measured_grid_loss(raw, total))
    return from_grid_units(total, clip_norm), clipped


def _user_mean_grads(model: nn.Module, user_examples: list[np.ndarray], chunk_size: int,
                     method: str, pad_id: int | None = None, autocast: bool = False,
                     losses: list | None = None) -> list[torch.Tensor]:
    """Each user's mean gradient: one (U, d_p) tensor per trainable array (segment sums of per-example grads)."""
    params = [p for _, p in trainable_params(model)]
    counts = np.array([len(e) for e in user_examples], dtype=np.int64)
    num_users = len(user_examples)
    sums = [torch.zeros((num_users, p.numel()), dtype=torch.float32, device=p.device) for p in params]
    nonempty = [np.asarray(e, dtype=np.int64).reshape(-1, np.asarray(e).shape[-1]) for e in user_examples if len(e)]
    if nonempty:
        stacked = np.concatenate(nonempty)
        owner = np.repeat(np.arange(num_users), counts)
        rank = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)  # position in its user
        for lo, grads in chunk_grads(model, stacked, chunk_size, method, pad_id, autocast, losses):
            add_by_user(sums, grads, owner[lo:lo + chunk_size], rank[lo:lo + chunk_size])
    denom = torch.as_tensor(np.maximum(counts, 1), dtype=torch.float32, device=sums[0].device if sums else None)
    return [s / denom[:, None] for s in sums]


def _local_steps_update(model: nn.Module, examples: np.ndarray, start: list[np.ndarray], local_steps: int,
                        local_lr: float, batch_size: int, pad_id: int | None = None) -> list[torch.Tensor]:
    """start − end after τ SGD steps on batches cycling over the user's examples."""
    params = [p for _, p in trainable_params(model)]
    start_t = [p.detach().clone() for p in params]
    n = len(examples)
    if n == 0:
        return [torch.zeros_like(p) for p in params]
    tokens = as_tokens(model, examples)
    b = min(batch_size, n)
    model.train()
    for step in range(local_steps):
        idx = torch.as_tensor(np.arange(step * b, step * b + b) % n, device=tokens.device)
        for p in params:
            p.grad = None
        with torch.enable_grad():
            per_example_loss(model, tokens[idx], pad_id).mean().backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= local_lr * p.grad
    update = [(s - p.detach()).float() for s, p in zip(start_t, params)]
    for p in params:
        p.grad = None
    set_trainable(model, start)
    return update


def uls_clipped_sum(model: nn.Module, user_examples: list[np.ndarray], clip_norm: float, update: str,
                    local_steps: int, local_lr: float, batch_size: int, start: list[np.ndarray],
                    chunk_size: int = DEFAULT_CHUNK, method: str = DEFAULT_METHOD, pad_id: int | None = None,
                    autocast: bool = False, losses: list | None = None,
                    grid_check: list | None = None) -> tuple[np.ndarray, int, list[float]]:
    """Σ_u clip(Δ_u, C) over users, each Δ_u computed from `start` on that user's (≤ k) examples.

    update="gradient": Δ_u = mean gradient of the loss over the user's examples
    (all users batched together: per-example gradients, then per-user means).
    update="local-steps": Δ_u = start − weights after `local_steps` SGD steps
    (lr `local_lr`, batches of `batch_size` cycling over the user's examples).
    Returns (flat float64 sum, number of users clipped, per-user pre-clip norms).
    The model's trainable weights are left at `start`. `autocast` applies to update="gradient" (as in
    `per_example_grads`); local steps run in the model's dtype. `losses` (update="gradient" only): the
    per-example losses of the stacked examples, in order, as in `per_example_grads`. `grid_check`: as in
    `els_clipped_sum`.
    """
    if update not in ("gradient", "local-steps"):
        raise ValueError(f"update must be 'gradient' or 'local-steps', got {update!r}")
    set_trainable(model, start)
    params = [p for _, p in trainable_params(model)]
    total = [torch.zeros(p.numel(), dtype=torch.float64, device=p.device) for p in params]
    if not user_examples:
        return flat_numpy(total), 0, []
    if update == "gradient":
        per_user = _user_mean_grads(model, user_examples, chunk_size, method, pad_id, autocast, losses)  # (U, d_p)
    else:
        deltas = [_local_steps_update(model, e, start, local_steps, local_lr, batch_size, pad_id)
                  for e in user_examples]
        per_user = [torch.stack([d[j].reshape(-1) for d in deltas]) for j in range(len(params))]
    norms = torch.sqrt(sum(u.double().pow(2).sum(dim=1) for u in per_user))
    factors = clip_factors(norms, clip_norm, 1e-300)
    raw = [torch.zeros_like(t) for t in total] if grid_check is not None else [None] * len(total)
    for acc, r, u in zip(total, raw, per_user):
        acc += grid_units(factors, u, clip_norm, r)
    if grid_check is not None:
        grid_check.append(measured_grid_loss(raw, total))
    return from_grid_units(total, clip_norm), int((norms > clip_norm).sum()), [float(x) for x in norms.cpu()]


def clip_factors(norms: torch.Tensor, clip_norm: float, tiny: float = 1e-300) -> torch.Tensor:
    """min(1, C'/‖g‖) per record, C' = `record_clip_norm(C)` (C less 2^-40 of it: see `fl_userdp.mechanism.fixed_point`),
    0 for a non-finite norm (as `fl_userdp.mechanism.clipping.clip_factors`). Float64 norms give float64 factors."""
    factors = torch.clamp(record_clip_norm(clip_norm) / torch.clamp(norms, min=tiny), max=1.0)
    return torch.where(torch.isfinite(norms), factors, torch.zeros_like(factors))


def grid_units(factors: torch.Tensor, records: torch.Tensor, clip_norm: float,
               raw: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_i of the clipped records factors_i·records_i (rows), each on the grid of `fl_userdp.mechanism.fixed_point`,
    in grid units: float64 integers, whose sum is exact in any order (the torch twin of `scaled_grid_sum`).
    A non-finite record (factor 0) counts as zero. `raw`: when given, the same sum off the grid is added to it
    (to measure what the grid dropped: `fl_userdp.mechanism.fixed_point.grid_loss`)."""
    scale = factors.double() * 2.0 ** grid_exponent(clip_norm)
    scaled = records.to(torch.float64, copy=True).mul_(scale[:, None])   # one float64 copy, then in place
    # a non-finite record has factor 0: its NaN/Inf (or NaN from 0·Inf) become 0, as if zeroed first
    scaled = torch.nan_to_num_(scaled, nan=0.0, posinf=0.0, neginf=0.0)
    if raw is not None:
        raw += scaled.sum(dim=0)
    return scaled.trunc_().sum(dim=0)


def measured_grid_loss(raw: list[torch.Tensor], units: list[torch.Tensor]) -> float:
    """`grid_loss` of a sum formed by `grid_units` with `raw` accumulators (both in grid units)."""
    return grid_loss(flat_numpy(raw), flat_numpy(units))


def from_grid_units(sums: list[torch.Tensor], clip_norm: float) -> np.ndarray:
    """Flat float64 numpy vector of grid-unit sums (exact: the unit is a power of two)."""
    return np.ldexp(flat_numpy(sums), -grid_exponent(clip_norm))


@torch.no_grad()
def eval_loss(model: nn.Module, examples: np.ndarray, batch_size: int = 64, pad_id: int | None = None) -> float:
    """Mean per-token next-token loss over `examples` (nan when there are none).

    With `pad_id` the padding targets are left out and the mean is over the
    remaining tokens (so exp(eval_loss) is a per-token perplexity of real text).
    """
    examples = np.asarray(examples, dtype=np.int64)
    if examples.shape[0] == 0:
        return float("nan")
    total, tokens_counted = 0.0, 0.0
    for lo in range(0, examples.shape[0], batch_size):
        tokens = as_tokens(model, examples[lo:lo + batch_size])
        mask = target_mask(tokens, pad_id)
        weights = (mask.sum(dim=1) if mask is not None
                   else torch.full((tokens.shape[0],), float(tokens.shape[1] - 1), device=tokens.device))
        total += float((per_example_loss(model, tokens, pad_id) * weights).sum())
        tokens_counted += float(weights.sum())
    return total / max(tokens_counted, 1.0)


__all__ = ["per_example_loss", "target_mask", "per_example_grads", "chunk_grads", "padded_chunks", "add_by_user",
           "els_clipped_sum", "uls_clipped_sum", "eval_loss", "clip_factors", "grid_units", "from_grid_units",
           "flat_numpy", "get_trainable", "set_trainable"]
