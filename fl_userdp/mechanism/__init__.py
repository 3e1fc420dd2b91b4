"""The mechanism: what turns users' data into one private release (pure: numpy only).

sampling (Poisson users for ULS, Poisson examples under a cap k for ELS), clipping (l2, per record),
fixed_point (exact, order-free sums on an integer grid), aggregate (sum, add noise once, divide by the
expected count), noise (per-release keyed or OS-entropy Gaussian noise), adaptive_clip (the noised
unclipped count and the next C), private_loss (the noised training loss and clipped fraction, accounted
with the round), validation (the server's checks on every contribution).
"""
