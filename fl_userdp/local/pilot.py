"""The advisor's pilot: how well a clipped example and a clipped user mean point along the mean gradient.

`measure_pilot(cfg)` takes the run's model at its starting weights and a few of its training users
(a seeded choice), computes per-example gradients of the trainable weights and returns a
`fl_userdp.study.advisor.Pilot`:

* the mean gradient is estimated on one half of the pilot users and the cosines are measured on the
  other half (and the other way round, averaged), so no record is compared with a mean it is part of;
* `example_cosine[k]`: the mean cosine of the examples an ELS cap k keeps (each user's first
  min(n_u, k) rows of a seeded permutation; examples weighted equally, as ELS sums them);
* `user_cosine[G]`: the mean cosine of each user's mean gradient over min(n_u, G) of those rows
  (users weighted equally, as ULS sums them). Clipping scales a vector and leaves both cosines alone;
* `records`: per pilot user, its examples' gradient norms and cosines (in the order a cap keeps them) and its
  mean gradient's norm and cosine per cap: the advisor's clip-norm model and its interval (users resampled);
* `within_user_share`: Σ‖g_ui − ḡ_u‖² / Σ‖g_ui − ḡ‖² over the pilot rows (g_ui: example i of user u,
  ḡ_u: user u's mean, ḡ: the mean of all pilot rows) — 0 when a user's examples are copies of each
  other, about 1 when they are as varied as the population.

Two passes over the pilot rows (the mean gradients, then the cosines), so memory stays O(d) whatever
the model. It reads training users' data and releases nothing: what it prints is for the person
planning a run on their own data (see `fl-userdp advise`), outside any DP guarantee.
"""
from __future__ import annotations

import numpy as np
import torch

from ..study.advisor import CAPS, Pilot
from ..config import RunConfig
from ..errors import ConfigError
from ..rng import rng_for
from .model import build_model, num_trainable
from .updates import per_example_grads

CHUNK = 64


def _pilot_rows(corpus, users: np.ndarray, cap: int, seed: int) -> list[np.ndarray]:
    out = []
    for u in users:
        n_u = int(corpus.counts[u])
        ids = rng_for(seed, "pilot", 1, int(u)).permutation(n_u)[:min(n_u, cap)]
        out.append(corpus.examples_of(int(u), np.sort(ids)))
    return out


def _grads(model, rows: np.ndarray, pad_id) -> torch.Tensor:
    """(b, d) float64 per-example gradients, flat in trainable order."""
    out = []
    for lo in range(0, rows.shape[0], CHUNK):
        tokens = torch.as_tensor(np.asarray(rows[lo:lo + CHUNK], dtype=np.int64))
        g = per_example_grads(model, tokens, pad_id=pad_id)
        out.append(torch.cat([t.reshape(t.shape[0], -1) for t in g], dim=1).double())
    return torch.cat(out)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b) / (a.norm(dim=-1) * b.norm()).clamp(min=1e-30)


def measure_pilot(cfg: RunConfig, users: int = 128, caps: tuple[int, ...] = CAPS) -> Pilot:
    """Cosines of clipped examples and clipped user means to the mean gradient (see the module docstring)."""
    from ..data import load_corpus

    if cfg.model.name == "linear" or ":" in cfg.model.name:
        raise ConfigError("model.name", cfg.model.name, "the pilot measures language models (tiny or a local "
                          "Hugging Face folder / .gguf); for other tasks pass the cosines yourself")
    if users < 4:
        raise ConfigError("pilot-users", users, "must be >= 4 (two halves of at least two users)")
    corpus = load_corpus(cfg.data, cfg.model, cfg.seed)
    model = build_model(cfg.model, cfg.seed)
    pad_id = getattr(corpus, "eos_id", None) if hasattr(corpus, "pad_mask") else None
    pick = rng_for(cfg.seed, "pilot", 0, 0).choice(corpus.num_users, size=min(users, corpus.num_users),
                                                    replace=False)
    caps = tuple(sorted(set(int(c) for c in caps)))
    rows = _pilot_rows(corpus, pick, max(caps), cfg.seed)
    halves = (np.arange(len(pick)) % 2 == 0, np.arange(len(pick)) % 2 == 1)
    sums, counts = [], []
    for half in halves:                                   # pass 1: the mean gradient of each half
        stacked = np.concatenate([r for r, h in zip(rows, half) if h])
        sums.append(_grads(model, stacked, pad_id).sum(dim=0))
        counts.append(stacked.shape[0])
    means = [s / c for s, c in zip(sums, counts)]
    overall = (sums[0] + sums[1]) / sum(counts)
    ex_sum = {c: 0.0 for c in caps}
    ex_num = {c: 0 for c in caps}
    user_cos = {c: [] for c in caps}
    within = total = 0.0
    records = []
    for i, r in enumerate(rows):                           # pass 2: cosines against the other half's mean
        other = means[1 - i % 2]
        g = _grads(model, r, pad_id)
        cos = _cos(g, other)
        rec = {"norm": g.norm(dim=1).tolist(), "cos": cos.tolist(), "mean_norm": {}, "mean_cos": {}}
        for c in caps:
            m = min(len(r), c)
            ex_sum[c] += float(cos[:m].sum())
            ex_num[c] += m
            mean = g[:m].mean(dim=0)
            user_cos[c].append(float(_cos(mean, other)))
            rec["mean_norm"][c], rec["mean_cos"][c] = float(mean.norm()), user_cos[c][-1]
        records.append(rec)
        within += float(((g - g.mean(dim=0)) ** 2).sum())
        total += float(((g - overall) ** 2).sum())
    return Pilot(dim=num_trainable(model), example_cosine={c: ex_sum[c] / ex_num[c] for c in caps},
                 user_cosine={c: float(np.mean(user_cos[c])) for c in caps}, users=len(pick),
                 within_user_share=within / total if total > 0 else None, records=tuple(records))
