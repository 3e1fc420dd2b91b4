"""Fast privacy loss of the ELS mixture-of-Gaussians pair, for dp_accounting's PLD.

dp_accounting builds a PLD for `MixtureOfGaussiansDpEvent` by inverting the
privacy loss at every grid point with a recursive, scalar bisection; for
k = 8 at discretisation 1e-4 that alone takes tens of seconds. Everything else
it does (connect-the-dots construction, tail handling, FFT composition) is
fast and well tested, so we keep it and replace only the inversion.

`FastMixtureGaussianPrivacyLoss` inverts all grid points at once: a coarse
table of the loss brackets every target, then a safeguarded Newton iteration
(the loss is a log-sum-exp of affine functions of x, hence smooth and
monotone) converges to float precision, each block of table cells with only the
components that matter on it. The root is exact to ~1e-12, finer
than dp_accounting's own 1e-6 rounding, so the hockey-stick values it feeds to
connect-the-dots are at least as accurate as the library's.

Mixture components that cannot matter anywhere in the searched interval
(every value below e^-40 of another component's there) are dropped before the
iteration: they change the log-sum-exp by less than a float ulp.

Where a component has sensitivity 0 (ELS's J = 0, whose probability (1-q)^k
may be as small as 1e-300), the loss flattens toward that component's constant:
a target beyond it has no root (the inverse is ±inf, exactly what the library
returns for losses beyond log(1-q)), and targets close to it have roots far
out. Both are split off, so that the bracket of the other targets stays tight;
the library's sampling probability 1 - p(J = 0) rounds to 1 there and hides
the limit from its own check.

`get_delta_for_epsilon` is the library's, its closing Python loop over the grid
vectorised. `privacy_loss_tail` is the library's, except where the library's bisection
bracket for the lower truncation point ends exactly on the target (one
sensitivity, as at q = 1, with some σ: the library returns None and fails
later): the bracket is then widened until it holds the target.
"""
from __future__ import annotations

import numbers

import numpy as np
from dp_accounting.pld import common as pld_common
from dp_accounting.pld import privacy_loss_mechanism as plm

_NEGLIGIBLE_LOG_RATIO = -40.0
_TABLE_POINTS = 2049
_MAX_ITERS = 100
_BLOCK_CELLS = 64  # table cells per block of targets that share one set of components...
_FEW_COMPONENTS = 16  # ...where there are more components than this (fewer: one block)
_MAX_PRUNED = 2048  # components beyond which none are pruned (the pairwise test's K^2 memory)
_NARROW_STEPS = 20  # bisection steps narrowing each end of the bracket (to ~1e-6 of its width)
_NEAR_LIMIT = 1e-6  # relative distance to the loss's limit below which a target's root lies far out


class FastMixtureGaussianPrivacyLoss(plm.MixtureGaussianPrivacyLoss):
    """`MixtureGaussianPrivacyLoss` with a vectorised inverse privacy loss."""

    def _affine_terms(self, bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, float]:
        """Constants c_j, slopes a_j (z_j = c_j + a_j x) that matter on `bounds`, and the sign."""
        c = np.asarray(self._precompute_privacy_loss_constants, float)
        s = np.asarray(self.sensitivities, float) / self._variance
        remove = self.adjacency_type == plm.AdjacencyType.REMOVE
        a = -s if remove else s
        if c.size > _MAX_PRUNED:  # the pairwise test below is K^2: keep every component
            return c, a, (1.0 if remove else -1.0)
        ends = np.array(bounds, float)
        z = c[:, None] + a[:, None] * ends[None, :]  # (K, 2)
        # z_j - z_i is affine in x, so its max over the interval is at an end.
        gap = (z[:, None, :] - z[None, :, :]).max(axis=2)  # gap[j, i]
        keep = gap.min(axis=1) > _NEGLIGIBLE_LOG_RATIO
        return c[keep], a[keep], (1.0 if remove else -1.0)

    def _loss_limit(self) -> float | None:
        """Where the loss flattens (REMOVE: its infimum, x → +∞; ADD: its supremum, x → −∞); None if unbounded."""
        zero = np.asarray(self.sensitivities, float) == 0
        if not zero.any():
            return None
        c0 = float(np.logaddexp.reduce(np.asarray(self._precompute_privacy_loss_constants, float)[zero]))
        return c0 if self.adjacency_type == plm.AdjacencyType.REMOVE else -c0

    def privacy_loss_tail(self, precision: float = 1e-4) -> plm.TailPrivacyLossDistribution:
        tail_mass = 0.5 * np.exp(self._log_mass_truncation_bound)
        z_value = self._gaussian_random_variable.ppf(tail_mass)
        lower = z_value - self._max_sens
        if self.adjacency_type != plm.AdjacencyType.REMOVE or self.mu_upper_cdf(lower) <= tail_mass:
            return super().privacy_loss_tail(precision)
        step = max(precision, self._standard_deviation * 1e-6)
        while self.mu_upper_cdf(lower) > tail_mass:  # the library's bracket misses the target by rounding
            lower -= step
            step *= 2
        lower_x = pld_common.inverse_monotone_function(
            self.mu_upper_cdf, tail_mass,
            pld_common.BinarySearchParameters(lower, z_value, tolerance=precision), increasing=True)
        upper_x = -z_value
        pmf = {np.inf: self.mu_upper_cdf(lower_x), self.privacy_loss(upper_x): 1 - self.mu_upper_cdf(upper_x)} \
            if self._pessimistic_estimate else {self.privacy_loss(lower_x): self.mu_upper_cdf(lower_x)}
        return plm.TailPrivacyLossDistribution(lower_x, upper_x, pmf)

    def get_delta_for_epsilon(self, epsilon):
        """The library's, with its closing Python loop (deltas made non-increasing from the right) vectorised."""
        epsilons = np.atleast_1d(epsilon)
        if not np.all(epsilons[1:] >= epsilons[:-1]):
            raise ValueError(f"Epsilon values must be non-decreasing: {epsilons}")
        deltas = np.zeros_like(epsilons, dtype=float)
        if self._sampling_prob == 1.0:
            inverse = np.full_like(epsilons, True, dtype=bool)
        elif self.adjacency_type == plm.AdjacencyType.ADD:
            inverse = epsilons < -np.log1p(-self._sampling_prob)
        elif self.adjacency_type == plm.AdjacencyType.REMOVE:
            inverse = epsilons > np.log1p(-self._sampling_prob)
            deltas[~inverse] = -np.expm1(epsilons[~inverse])
        else:
            raise ValueError(f"{self.adjacency_type} adjacency type is not supported.")
        x_cutoffs = self.inverse_privacy_losses(epsilons[inverse])
        deltas[inverse] = self.mu_upper_cdf(x_cutoffs) - np.exp(epsilons[inverse] + self.mu_lower_log_cdf(x_cutoffs))
        deltas = np.clip(deltas, 0, 1)
        if isinstance(epsilon, numbers.Number):
            return float(deltas[0])
        return np.maximum.accumulate(deltas[::-1])[::-1]

    def _bracket(self, targets: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
        """Widen [lo, hi] until the (decreasing) loss spans all targets, then narrow it to their roots.

        The library derives the interval from a sandwich bound that can miss
        the root near the ends of the loss range; we never trust it blindly.
        """
        width = max(hi - lo, 1.0)
        for _ in range(64):
            if self.privacy_loss(lo) >= targets.max():
                break
            lo -= width
            width *= 2
        width = max(hi - lo, 1.0)
        for _ in range(64):
            if self.privacy_loss(hi) <= targets.min():
                break
            hi += width
            width *= 2
        # ...then narrow it to the roots of the extreme targets (the library's interval can be far wider
        # than the roots', which would leave the table's cells wide and every component in play).
        top, bottom = targets.max(), targets.min()
        a, b = lo, hi
        for _ in range(_NARROW_STEPS):  # largest lo with loss(lo) >= top
            mid = 0.5 * (a + b)
            if not a < mid < b:
                break
            a, b = (mid, b) if self.privacy_loss(mid) >= top else (a, mid)
        lo = a
        a, b = lo, hi
        for _ in range(_NARROW_STEPS):  # smallest hi with loss(hi) <= bottom
            mid = 0.5 * (a + b)
            if not a < mid < b:
                break
            a, b = (a, mid) if self.privacy_loss(mid) <= bottom else (mid, b)
        return lo, b

    def _inverse_privacy_losses_with_range(
        self,
        privacy_losses: np.ndarray,
        bounds: tuple[float, float],
        precision: float = 1e-6,
    ) -> np.ndarray:
        targets = np.asarray(privacy_losses, dtype=float)
        if targets.size == 0:
            return targets
        limit = self._loss_limit()
        if limit is not None:
            remove = self.adjacency_type == plm.AdjacencyType.REMOVE
            beyond = targets <= limit if remove else targets >= limit
            near = ~beyond & (np.abs(targets - limit) <= _NEAR_LIMIT * max(1.0, abs(limit)))
            if beyond.any() or near.any() and not near.all():
                out = np.full(targets.shape, np.inf if remove else -np.inf)
                for part in (near, ~beyond & ~near):
                    if part.any():
                        out[part] = self._inverse_privacy_losses_with_range(targets[part], bounds, precision)
                return out
        lo_b, hi_b = self._bracket(targets, float(bounds[0]), float(bounds[1]))
        c, a, sign = self._affine_terms((lo_b, hi_b))

        def loss_and_slope(x: np.ndarray, c: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            z = c[None, :] + np.multiply.outer(x, a)
            m = z.max(axis=1, keepdims=True)
            e = np.exp(z - m)
            tot = e.sum(axis=1)
            lse = m[:, 0] + np.log(tot)
            return sign * lse, sign * (e @ a) / tot

        table_x = np.linspace(lo_b, hi_b, _TABLE_POINTS)
        table_loss, _ = loss_and_slope(table_x, c, a)  # non-increasing in x
        idx = np.searchsorted(-table_loss, -targets, side="left")
        idx = np.clip(idx, 1, table_x.size - 1)
        lo = table_x[idx - 1].copy()
        hi = table_x[idx].copy()
        x = 0.5 * (lo + hi)
        # With many components, each block of table cells iterates with those that matter on its own interval.
        block = _BLOCK_CELLS if c.size > _FEW_COMPONENTS else table_x.size
        for start in range(1, table_x.size, block):
            end = min(start + block, table_x.size)
            members = np.nonzero((idx >= start) & (idx < end))[0]
            if members.size == 0:
                continue
            cb, ab, _ = self._affine_terms((table_x[start - 1], table_x[end - 1]))
            active = np.zeros(targets.size, dtype=bool)
            active[members] = True
            for _ in range(_MAX_ITERS):
                ia = np.nonzero(active)[0]
                if ia.size == 0:
                    break
                xa = x[ia]
                f, d = loss_and_slope(xa, cb, ab)
                f = f - targets[ia]
                right = f > 0  # loss still above target: root lies to the right
                lo[ia] = np.where(right, xa, lo[ia])
                hi[ia] = np.where(right, hi[ia], xa)
                with np.errstate(divide="ignore", invalid="ignore"):
                    xn = xa - f / d
                tol = 1e-13 * np.maximum(1.0, np.abs(xa))
                converged = (np.abs(xn - xa) <= tol) | (hi[ia] - lo[ia] <= tol) | (f == 0)
                unsafe = ~converged & (~np.isfinite(xn) | (xn < lo[ia]) | (xn > hi[ia]))
                xn = np.where(unsafe, 0.5 * (lo[ia] + hi[ia]), xn)
                xn = np.where(converged & ~np.isfinite(xn), xa, xn)
                x[ia] = xn
                active[ia[converged]] = False
        return x
