"""Banded matrix-factorization noise (DP-BandMF): the strategy, its error, and the noise stream.

Owns the arithmetic of correlated noise and nothing else (numpy only; no config, no accounting):

* **The strategy C.** A lower-triangular T×T Toeplitz matrix with b bands, given by its first column
  c_0 … c_{b−1} (`coefficients`), scaled so that its largest column norm is 1 — the sensitivity of one
  participation, which is what the accountant's σ is relative to. b = 1 is C = I: independent noise.
* **The noise it implies.** The run releases x_t + σ·(C⁻¹z)_t (z i.i.d. N(0, I)), i.e. the prefix
  sums A x̂ carry the noise σ·A C⁻¹ z, where A is the prefix-sum workload (ones on and below the
  diagonal). `prefix_sum_error` is its expected total squared error ‖A C⁻¹‖²_F per coordinate and unit
  σ² (closed form, O(T·b)); `error_ratio` divides it by independent noise's ‖A‖²_F = T(T+1)/2.
* **The stream.** `NoiseStream` turns the per-round draws z_t into w = C⁻¹z without ever forming C:
  w_t = (z_t − Σ_{j=1}^{b−1} c_j·w_{t−j}) / c_0, with a buffer of the last b − 1 vectors w (b·d floats
  with z_t and w_t themselves). The buffer is secret (it is past noise): `state_dict` is for
  checkpoints only, never for a published file.

Assumes the caller keeps σ and the clip norm the same for every round of a stream (the factorization is
of the whole run), and advances the stream exactly once per release. The accounting that makes banded C
worth it (participations ≥ b rounds apart do not interact) lives in `fl_userdp.accounting`, the cyclic
groups that guarantee that separation in `fl_userdp.mechanism.sampling`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

COEFFICIENTS = ("sqrt", "optimized")


def sqrt_coefficients(bands: int) -> np.ndarray:
    """The banded square root of the prefix-sum workload (Kalinin & Lampert 2024): A^{1/2} is Toeplitz with
    c_j = binom(2j, j)/4^j = 1, 1/2, 3/8, 5/16, … (the series of (1 − x)^{−1/2}); the first `bands` of them,
    scaled to column norm 1.

    What it minimises: nothing exactly — it is the closed-form square root A^{1/2} (optimal among all
    factorizations for the max error as T → ∞, up to lower-order terms), truncated to b bands so the
    amplified accounting applies. b = 1 gives [1.0]: independent noise.
    """
    b = _check_bands(bands)
    c = np.empty(b)
    c[0] = 1.0
    for j in range(1, b):
        c[j] = c[j - 1] * (2 * j - 1) / (2 * j)
    return c / np.sqrt(np.sum(c * c)) if b > 1 else c


def inverse_coefficients(coeffs: np.ndarray, n: int) -> np.ndarray:
    """First column of C⁻¹ (n entries): C⁻¹ of a lower-triangular Toeplitz matrix is lower-triangular
    Toeplitz, d_0 = 1/c_0, d_m = −(Σ_{j=1}^{min(m, b−1)} c_j·d_{m−j}) / c_0."""
    c = np.asarray(coeffs, np.float64)
    n, tail = int(n), c[1:][::-1]  # tail[i] multiplies d[m − (b − 1) + i]
    d = np.zeros(n + tail.size)    # d[: b − 1] is zero padding: d_m is stored at index m + b − 1
    for m in range(n):
        i = m + tail.size
        d[i] = ((1.0 if m == 0 else 0.0) - np.dot(tail, d[i - tail.size:i])) / c[0]
    return d[tail.size:]


def prefix_sum_error(coeffs: np.ndarray, rounds: int) -> float:
    """‖A C⁻¹‖²_F for T = `rounds`: the expected total squared error of all T prefix sums per coordinate, in
    units of σ² (C normalised to max column norm 1, as `coefficients` returns it). A C⁻¹ is Toeplitz with
    first column e = cumsum(d), d = C⁻¹'s first column, so ‖A C⁻¹‖²_F = Σ_{m<T} (T − m)·e_m²."""
    e = np.cumsum(inverse_coefficients(coeffs, rounds))
    return float(np.sum((rounds - np.arange(rounds)) * e * e))


def error_ratio(coeffs: np.ndarray, rounds: int) -> float:
    """RMSE of the prefix sums with strategy `coeffs` over that of independent noise at the same σ and T:
    sqrt(‖A C⁻¹‖²_F / ‖A‖²_F), ‖A‖²_F = T(T+1)/2. Below 1: correlated noise is better at equal σ."""
    return float(np.sqrt(prefix_sum_error(coeffs, rounds) / (rounds * (rounds + 1) / 2)))


def _error_and_gradient(c: np.ndarray, rounds: int) -> tuple[float, np.ndarray]:
    """F(c) = ‖A C(c)⁻¹‖²_F and ∂F/∂c_j. From C D = I: ∂d/∂c_j = −(d ∗ d) shifted by j, so with
    P = cumsum(d ∗ d), ∂e_m/∂c_j = −P_{m−j} and ∂F/∂c_j = −2 Σ_m (T − m)·e_m·P_{m−j}."""
    T = rounds
    d = inverse_coefficients(c, T)
    e = np.cumsum(d)
    weights = (T - np.arange(T)) * e
    size = 1 << (2 * T - 1).bit_length()
    P = np.cumsum(np.fft.irfft(np.fft.rfft(d, size) ** 2, size)[:T])  # d ∗ d, first T terms
    grad = np.array([-2.0 * np.dot(weights[j:], P[:T - j]) for j in range(c.size)])
    return float(np.dot(weights, e)), grad


def optimized_coefficients(bands: int, rounds: int, steps: int = 300, momentum: float = 0.9) -> np.ndarray:
    """Banded coefficients optimised for a run of T = `rounds` releases.

    What it minimises: the prefix-sum workload's total squared error ‖A C⁻¹‖²_F (= `prefix_sum_error`)
    over b-banded lower-triangular Toeplitz C subject to max column norm ‖c‖ = 1 — the mean squared error
    of the T prefix sums at a fixed σ (pfl-research's and jax-privacy's objective for a known T).
    How: gradient descent with heavy-ball momentum on the unit sphere (the gradient projected onto the
    sphere's tangent, c renormalised after each step), started at `sqrt_coefficients`; a step that
    increases the error is undone and the step size halved, so the result is never worse than the start.
    Deterministic (no randomness).
    """
    b = _check_bands(bands)
    T = int(rounds)
    if T < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    c = sqrt_coefficients(b)
    if b == 1 or T == 1:
        return c
    err, grad = _error_and_gradient(c, T)
    velocity, lr = np.zeros(b), 0.1 / max(float(np.linalg.norm(grad)), 1e-300)
    for _ in range(int(steps)):
        tangent = grad - np.dot(grad, c) * c
        velocity = momentum * velocity - lr * tangent
        trial = c + velocity
        if trial[0] <= 0:
            lr, velocity = lr / 2, np.zeros(b)
            continue
        trial /= np.linalg.norm(trial)
        trial_err, trial_grad = _error_and_gradient(trial, T)
        if not trial_err < err:
            lr, velocity = lr / 2, np.zeros(b)
            if lr * float(np.linalg.norm(tangent)) < 1e-12:
                break
            continue
        c, err, grad = trial, trial_err, trial_grad
        lr *= 1.05
    return c


def coefficients(kind: str, bands: int, rounds: int | None = None) -> np.ndarray:
    """'sqrt' (`sqrt_coefficients`) or 'optimized' (`optimized_coefficients` for `rounds`)."""
    if kind == "sqrt":
        return sqrt_coefficients(bands)
    if kind == "optimized":
        if rounds is None:
            raise ValueError("optimized coefficients need the number of rounds")
        return optimized_coefficients(bands, rounds)
    raise ValueError(f"coefficients must be one of {list(COEFFICIENTS)}, got {kind!r}")


def max_column_norm(coeffs: np.ndarray, rounds: int | None = None) -> float:
    """Largest column norm of C (T×T, all b bands fit when T ≥ b): sqrt(Σ_{j<min(b, T)} c_j²)."""
    c = np.asarray(coeffs, np.float64)
    if rounds is not None:
        c = c[:max(int(rounds), 1)]
    return float(np.sqrt(np.sum(c * c)))


def strategy_matrix(coeffs: np.ndarray, rounds: int) -> np.ndarray:
    """C as a dense T×T array (tests and small checks only)."""
    c = np.asarray(coeffs, np.float64)
    C = np.zeros((rounds, rounds))
    for j in range(min(c.size, rounds)):
        C += c[j] * np.eye(rounds, k=-j)
    return C


class NoiseStream:
    """w = C⁻¹z, one round at a time: `next(z_t)` returns w_t = (z_t − Σ_{j≥1} c_j·w_{t−j}) / c_0.

    Keeps the last b − 1 vectors w (ring buffer); the sum runs in a fixed order (j = 1 … b − 1), so a stream
    restored from `state_dict` continues bit for bit. With b = 1, `next(z)` returns z itself (c_0 = 1): the
    release is then exactly the independent-noise release.
    """

    def __init__(self, coeffs: np.ndarray, size: int) -> None:
        self.coeffs = np.array(coeffs, dtype=np.float64)
        if self.coeffs.ndim != 1 or self.coeffs.size < 1 or not np.all(np.isfinite(self.coeffs)) \
                or self.coeffs[0] <= 0:
            raise ValueError(f"coefficients must be a finite 1-d array with c_0 > 0, got {coeffs!r}")
        self.size = int(size)
        self.rounds = 0                                      # releases drawn so far
        self._ring = np.zeros((self.coeffs.size - 1, self.size))
        self._head = 0                                       # ring row of w_{t−1}

    @property
    def bands(self) -> int:
        return int(self.coeffs.size)

    @property
    def memory_floats(self) -> int:
        """Floats held per release: the buffer's (b − 1)·d plus z_t and w_t while a release is formed (≈ b·d)."""
        return (self.bands + 1) * self.size

    def _past(self, j: int) -> np.ndarray:
        """w_{t−j} (j ≥ 1) as a view into the ring."""
        return self._ring[(self._head + j - 1) % self._ring.shape[0]]

    def next(self, z: np.ndarray) -> np.ndarray:
        """w_t for this release's standard-normal draw z_t (float64, length `size`); advances the stream."""
        z = np.asarray(z, dtype=np.float64)
        if z.shape != (self.size,):
            raise ValueError(f"noise draw must have shape ({self.size},), got {z.shape}")
        if self.bands == 1:
            self.rounds += 1
            return z if self.coeffs[0] == 1.0 else z / self.coeffs[0]
        w = z.copy()
        tmp = np.empty_like(w)
        for j in range(1, min(self.rounds, self.bands - 1) + 1):
            np.multiply(self._past(j), self.coeffs[j], out=tmp)
            w -= tmp
        w /= self.coeffs[0]
        self._head = (self._head - 1) % self._ring.shape[0]
        self._ring[self._head] = w
        self.rounds += 1
        return w.copy()

    def newest(self) -> np.ndarray:
        """w of the latest release (a copy); for the secret noise record a resume replays (b > 1 only)."""
        if self.bands == 1 or self.rounds == 0:
            raise ValueError("a one-band stream keeps no noise (or nothing was drawn yet)")
        return self._past(1).copy()

    def push(self, w: np.ndarray) -> None:
        """Advance by a w recorded earlier (a resume replaying logged releases): as `next` would have left it."""
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (self.size,):
            raise ValueError(f"recorded noise must have shape ({self.size},), got {w.shape}")
        if self.bands > 1:
            self._head = (self._head - 1) % self._ring.shape[0]
            self._ring[self._head] = w
        self.rounds += 1

    # -- checkpoint state (secret: past noise) ------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """{"coefficients", "rounds", "buffer"}: buffer row i is w_{t−1−i} (most recent first), the rows
        filled so far only."""
        filled = min(self.rounds, self.bands - 1)
        buffer = np.stack([self._past(j) for j in range(1, filled + 1)]) if filled else np.zeros((0, self.size))
        return {"coefficients": self.coeffs.copy(), "rounds": self.rounds, "buffer": buffer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output; ValueError when it belongs to another strategy or size."""
        coeffs = np.asarray(state["coefficients"], np.float64)
        if coeffs.shape != self.coeffs.shape or not np.array_equal(coeffs, self.coeffs):
            raise ValueError("the saved noise stream has other coefficients")
        rounds, buffer = int(state["rounds"]), np.asarray(state["buffer"], np.float64)
        filled = min(rounds, self.bands - 1)
        if rounds < 0 or buffer.shape != (filled, self.size):
            raise ValueError(f"the saved noise buffer has shape {buffer.shape}, expected ({filled}, {self.size})")
        self._ring[:] = 0.0
        self._head = 0
        if filled:
            self._ring[:filled] = buffer
        self.rounds = rounds


def _check_bands(bands: int) -> int:
    if isinstance(bands, bool) or not isinstance(bands, (int, np.integer)) or bands < 1:
        raise ValueError(f"bands must be an integer >= 1, got {bands!r}")
    return int(bands)
