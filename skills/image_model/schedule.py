"""What every framework's sampler shares, in numpy: the shifted times and the noise of a seed."""
from __future__ import annotations

import numpy as np


def times(steps: int, shift: float) -> list[float]:
    """steps + 1 times from 1 to 0: t' = shift * t / (1 + (shift - 1) * t) on an even grid."""
    grid = np.linspace(1.0, 0.0, steps + 1)
    return [float(v) for v in shift * grid / (1.0 + (shift - 1.0) * grid)]


def seed_noise(seed: int, channels: int, size: int) -> np.ndarray:
    """The starting latents of a seed, (1, C, h, w) float32: numpy's PCG64, so that a stack in any
    framework (torch, MLX) starts from the same numbers."""
    return np.random.default_rng(int(seed)).standard_normal((1, channels, size, size), dtype=np.float32)
