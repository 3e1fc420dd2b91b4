"""The private training loss (`privacy.private-loss`): the cohort's mean training loss and clipped fraction,
released with Gaussian noise next to the round's sum and accounted with it.

Each record (a user under ULS, an example under ELS) contributes its training loss clipped to [0, L]
(`clip_losses`; L = `privacy.loss-bound`, by default ln(model.vocab-size) for the tiny LM: the loss of the
uniform prediction) and whether its update was clipped. The nodes sum the clipped losses; the server bounds
each node's sum to [0, records × L] (`node_loss`) and releases, centred as adaptive clipping's count is
(`fl_userdp.mechanism.adaptive_clip`), so one record moves each part by at most half its range:

    loss part:   Σ_i (ℓ_i − L/2)      + N(0, (σ_l · L/2)²)       sensitivity L/2
    count part:  Σ_i (b_i − ½)        + N(0, (σ_l · ½)²)         sensitivity ½   (b_i = 1: not clipped)

σ_l (`privacy.loss-noise-multiplier`) is in units of each part's sensitivity. With adaptive clipping the
count is already released (σ_b) and only the loss part is added. The published values divide by the
*expected* count E, never by the replies:

    private_train_loss       = (noisy loss part) / E + L/2
    private_clipped_fraction = 1 − ((noisy count part) / E + ½)

(unbiased when the cohort has its expected size; noise can take them outside [0, L] and [0, 1]).

Privacy: the sum (sensitivity C, noise σC), the count and the loss part form one Gaussian mechanism on the
vector (sum/C, count, loss). One record moves it by a vector whose norm in units of each coordinate's noise
is at most √(σ⁻² + (2σ_b)⁻² + σ_l⁻² [+ σ_l⁻² for the count part]), so a round is a single release with the
effective multiplier

    σ_eff = (σ⁻² + (2σ_b)⁻² [adaptive clipping] + m·σ_l⁻²)^(−1/2),   m = 1 (adaptive) or 2 (loss and count)

and the ledger composes the mode's event at σ_eff (ELS: J records of one user move it by J times that, the
mixture the event already describes). tests/server/test_private_loss.py checks this against a direct
privacy-loss computation on the joint mechanism. `with_loss` folds the loss parts into a multiplier,
`without_loss` takes them out again (calibration: a target ε fixes σ_eff, and the sum's σ follows).
σ_l defaults to E / 10: the fraction's noise std is then 0.05, the loss's L/20.

Pure: numpy only.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError

LOSS_NOISE_FRACTION = 1 / 10  # default σ_l = expected count / 10


def default_loss_noise(expected: float) -> float:
    return LOSS_NOISE_FRACTION * float(expected)


def parts(adaptive: bool) -> int:
    """How many parts the loss release adds: the loss, and the clipped count unless adaptive clipping
    releases that count already."""
    return 1 if adaptive else 2


def with_loss(sigma: float, loss_sigma: float, adaptive: bool) -> float:
    """σ_eff of the round's release (multiplier `sigma`: the sum's, or the sum and count's) with the loss
    parts added; 0 when the rest has no noise."""
    if sigma <= 0:
        return 0.0
    return (sigma ** -2 + parts(adaptive) * loss_sigma ** -2) ** -0.5


def without_loss(sigma_eff: float, loss_sigma: float, adaptive: bool) -> float:
    """The multiplier the rest of the round's release needs so that, with the loss parts, it is `sigma_eff`."""
    if sigma_eff == 0:
        return 0.0
    rest = sigma_eff ** -2 - parts(adaptive) * loss_sigma ** -2
    if rest <= 0:
        least = sigma_eff * math.sqrt(parts(adaptive))
        raise ConfigError("privacy.loss-noise-multiplier", loss_sigma,
                          f"must be > {least:.4g} (with the calibrated joint multiplier {sigma_eff:.4g}): the "
                          "training loss alone would spend the whole budget")
    return rest ** -0.5


def clip_losses(losses: np.ndarray, bound: float) -> np.ndarray:
    """Each record's loss clipped to [0, L]; a non-finite loss counts as L (NaN, +inf) or 0 (−inf)."""
    out = np.nan_to_num(np.asarray(losses, np.float64), nan=bound, posinf=bound, neginf=0.0)
    return np.clip(out, 0.0, bound)


def clipped_loss_sum(losses: np.ndarray, bound: float, sizes: np.ndarray | None = None) -> float:
    """What a node reports under privacy.private-loss: Σ over its records of each record's loss clipped to
    [0, L]. `losses` per example; with `sizes` (ULS) a record is a user, its loss the mean of its `sizes[i]`
    consecutive examples' losses."""
    losses = np.asarray(losses, np.float64)
    if sizes is not None:
        sizes = np.asarray(sizes, np.int64)
        owner = np.repeat(np.arange(sizes.size), sizes)
        losses = np.bincount(owner, weights=losses, minlength=sizes.size) / np.maximum(sizes, 1)
    return float(clip_losses(losses, bound).sum())


def node_loss(loss_sum: float | None, records: int, bound: float) -> float:
    """A node's centred loss part Σ_i (ℓ_i − L/2): its reported sum of clipped losses bounded to
    [0, records × L] (a missing or non-finite sum counts as the midpoint), less records × L/2."""
    if loss_sum is None or not math.isfinite(loss_sum):
        return 0.0
    return min(max(float(loss_sum), 0.0), records * bound) - records * bound / 2


def mean_loss(noisy_centred: float, expected: float, bound: float) -> float:
    """The released mean training loss: the noised centred loss part over the expected count, plus L/2."""
    return noisy_centred / expected + bound / 2
