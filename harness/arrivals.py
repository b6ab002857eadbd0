"""When each request is sent: gamma-distributed gaps (burstiness 1 = Poisson), as vLLM's bench does."""
from __future__ import annotations

import numpy as np


def arrival_offsets(n: int, rate: float | None, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Send offsets in seconds from the start of a load point, for `n` requests at `rate` req/s.

    The cumulative offsets are rescaled so the last one is exactly n/rate: this removes the
    seed-to-seed drift of the total length without changing the shape of the gaps.
    `rate=None` (or inf) sends everything at once.
    """
    if n <= 0:
        return np.zeros(0)
    if rate is None or np.isinf(rate):
        return np.zeros(n)
    if rate <= 0 or burstiness <= 0:
        raise ValueError("rate and burstiness must be positive")
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    offsets = np.cumsum(gaps)
    return offsets * ((n / rate) / offsets[-1])
