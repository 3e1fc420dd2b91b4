"""Adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy 2021): C follows a quantile of the record norms.

Each round the nodes also report how many of their records (users under ULS,
examples under ELS) had a norm ≤ C. The server releases, next to the noised
sum, the noised *centred* count Σ_i (b_i − ½) + N(0, σ_b²) (b_i = 1 when
record i was not clipped: one record moves it by ½), estimates the unclipped
fraction b̃ = that / (expected count) + ½, and moves the clip norm
geometrically toward the target quantile γ:

    C ← C · exp(−η · (b̃ − γ))

Privacy: the joint release (sum with multiplier σ, count with σ_b) is, per
record, a Gaussian mechanism whose contribution has norm ≤ √(σ⁻² + (2σ_b)⁻²)
in units of the noise, i.e. a single release with the *effective* multiplier

    σ_eff = (σ⁻² + (2σ_b)⁻²)^(−1/2),

so the ledger composes the mode's event (ULS Poisson-subsampled Gaussian, ELS
mixture with J ~ Binomial(k, q) records of a user, aligned in the worst case)
at σ_eff (tests/server/test_adaptive_clip.py checks this against a direct
computation on the two-dimensional mechanism). A target ε is calibrated for
σ_eff, and σ for the sum follows from σ_b. σ_b defaults to the expected count
/ 20 (the paper's choice: the count's noise is a few percent of it).

Pure: numpy only.
"""
from __future__ import annotations

import math

from ..errors import ConfigError

COUNT_NOISE_FRACTION = 1 / 20  # default σ_b = expected count / 20
MAX_CLIP_LR = 10.0  # η: one round moves C by a factor of at most e^η


def default_count_noise(expected: float) -> float:
    return COUNT_NOISE_FRACTION * float(expected)


def effective_noise_multiplier(sigma: float, count_sigma: float) -> float:
    """σ_eff of the joint (sum, centred count) release; 0 when either part has no noise."""
    if sigma <= 0 or count_sigma <= 0:
        return 0.0
    return (sigma ** -2 + (2.0 * count_sigma) ** -2) ** -0.5


def sum_noise_multiplier(sigma_eff: float, count_sigma: float) -> float:
    """The σ for the sum that, with the count's σ_b, gives the joint release σ_eff."""
    if sigma_eff == 0:
        return 0.0
    rest = sigma_eff ** -2 - (2.0 * count_sigma) ** -2
    if rest <= 0:
        raise ConfigError("privacy.count-noise-multiplier", count_sigma,
                          f"must be > {sigma_eff / 2:.4g} (half the calibrated joint multiplier {sigma_eff:.4g}): "
                          "the count alone would spend the whole budget")
    return rest ** -0.5


def min_count_noise(sigma: float, least_effective: float) -> float:
    """The smallest σ_b for which the joint release with the sum's σ has σ_eff >= `least_effective` (inf when
    σ itself is below it)."""
    rest = least_effective ** -2 - sigma ** -2
    return math.inf if rest <= 0 else 0.5 * rest ** -0.5


def check_count_noise(count_sigma: float, expected: float, key: str = "privacy.count-noise-multiplier") -> None:
    """σ_b at most the expected count E: above it the released fraction's noise (σ_b/E) exceeds the whole
    range [0, 1] of what it estimates, and C would follow the noise."""
    if count_sigma > expected:
        raise ConfigError(key, count_sigma, f"must be <= the expected count {expected:.4g} (the noise on the "
                          "unclipped fraction it releases is σ_b / expected count, and above 1 C follows the noise)")


def unclipped_fraction(noisy_centred_count: float, expected: float) -> float:
    """b̃: the released centred count over the expected count, plus ½."""
    return noisy_centred_count / expected + 0.5


def next_clip_norm(clip_norm: float, fraction: float, quantile: float, lr: float) -> float:
    """C · exp(−η (b̃ − γ)) (the geometric update), with b̃ taken into [0, 1], where the fraction it estimates
    lies (post-processing of the released count: no privacy cost; it keeps a wild noise draw from moving C by
    more than e^η in one round)."""
    fraction = min(max(fraction, 0.0), 1.0)
    return float(clip_norm * math.exp(-lr * (fraction - quantile)))
