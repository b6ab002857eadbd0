"""What the server needs from an image engine."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class ImageEngine(Protocol):
    image_size: int

    def tokenize(self, prompt: str) -> list[int]: ...

    def generate(self, token_ids: list[int], seed: int, steps: int, guidance: float) -> np.ndarray:
        """Blocking: one (H, W, 3) uint8 image. Called from one worker thread at a time."""

    def counters(self) -> dict[str, float]:
        """Monotonic counters for /metrics."""
