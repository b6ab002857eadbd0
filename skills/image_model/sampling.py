"""Sampling as the official loop does it: Euler steps on the linear path from seeded noise (t = 1)
to the image (t = 0), times shifted towards the noisy end, classifier-free guidance as one batch of
[conditional; null text] rows; and the plain loop (every step recomputes the whole sequence)."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from .model import ImageModel
from .schedule import seed_noise, times


@dataclass(frozen=True)
class ImageRequest:
    token_ids: tuple[int, ...]  # the prompt's, before the model cuts or pads them
    seed: int
    steps: int = 20
    guidance: float = 5.0

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0


def noise(model: ImageModel, seed: int) -> torch.Tensor:
    cfg = model.cfg
    return torch.from_numpy(seed_noise(seed, cfg.latent_channels, cfg.latent_size))


def guide(v: torch.Tensor, guidance: float) -> torch.Tensor:
    """Rows [conditional; null] -> the guided velocity; one row is its own answer."""
    if v.shape[0] == 1:
        return v
    return v[1:2] + guidance * (v[0:1] - v[1:2])


def batch_ids(model: ImageModel, request: ImageRequest) -> torch.Tensor:
    rows = [model.text_ids(list(request.token_ids))] + ([model.null_ids()] if request.guided else [])
    return torch.tensor(rows, dtype=torch.long)


@torch.inference_mode()
def generate(model: ImageModel, request: ImageRequest) -> np.ndarray:
    """The plain loop: each step runs the whole sequence of every row. Returns (H, W, 3) uint8."""
    ids = batch_ids(model, request)
    x = noise(model, request.seed)
    schedule = times(request.steps, model.cfg.time_shift)
    for t, t_next in pairwise(schedule):
        v = guide(model.velocity(ids, x.expand(ids.shape[0], -1, -1, -1), t), request.guidance)
        x = x + (t_next - t) * v
    return model.pixels(x)[0]
