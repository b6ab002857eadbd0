"""setting G's engine: skills/image_model's sampler on the MLX port, with the text's keys and
values computed once per request and the null text's once at load (as skills/text_kv_reuse does
in torch), both guidance rows one batch, each step evaluated before the next."""
from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import mlx.core as mx
import numpy as np

from skills.image_model.config import tokenizer_dir
from skills.image_model.schedule import seed_noise, times

from .model import MlxImageModel


class MlxDenoiser:
    def __init__(self, folder: Path, reuse_text_kv: bool = True):
        from transformers import AutoTokenizer

        self.model = MlxImageModel(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(folder))
        self.reuse = reuse_text_kv
        self.image_size = self.model.cfg.image_size
        self._null = self.model.prefix_kv(mx.array([self.model.cfg.null_ids()])) if reuse_text_kv else None
        self._counts = {"denoise_steps_total": 0, "body_rows_total": 0, "prefix_rows_reused_total": 0,
                        "null_prefix_reused_total": 0}

    def tokenize(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def counters(self) -> dict[str, float]:
        return dict(self._counts)

    def generate(self, token_ids: list[int], seed: int, steps: int, guidance: float) -> np.ndarray:
        s, model = self.model.cfg, self.model
        guided = guidance != 1.0
        rows = [s.text_ids(token_ids)] + ([s.null_ids()] if guided else [])
        ids = mx.array(rows)
        x = mx.array(seed_noise(seed, s.latent_channels, s.latent_size))
        prefix = self._prefixes(ids, guided) if self.reuse else None
        suffix = 1 + s.image_tokens
        for t, t_next in pairwise(times(steps, s.time_shift)):
            latents = mx.broadcast_to(x, (len(rows), *x.shape[1:]))
            v = model.velocity(ids, latents, t) if prefix is None else model.velocity_after(prefix, latents, t)
            if guided:
                v = v[1:2] + guidance * (v[0:1] - v[1:2])
            x = x + (t_next - t) * v
            mx.eval(x)
            self._counts["denoise_steps_total"] += 1
            self._counts["body_rows_total"] += len(rows) * (suffix + (0 if prefix else s.prefix_length))
            self._counts["prefix_rows_reused_total"] += len(rows) * s.prefix_length if prefix else 0
        return model.pixels(x)[0]

    def _prefixes(self, ids: mx.array, guided: bool) -> list:
        if not guided:
            return self.model.prefix_kv(ids)
        self._counts["null_prefix_reused_total"] += 1
        cond = self.model.prefix_kv(ids[:1])
        return [(mx.concatenate([k, nk]), mx.concatenate([v, nv])) for (k, v), (nk, nv) in zip(cond, self._null)]
