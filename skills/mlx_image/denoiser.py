"""setting G's engine: skills/image_model's sampler on the MLX port, with the text's keys and
values computed once per request and the null text's once at load (as skills/text_kv_reuse does
in torch), both guidance rows one batch, each step evaluated before the next. `compiled`: each step
is an mx.compile'd graph, and the model's exp, sigmoid and tanh are skills/mlx_image/fused_math's
arithmetic (the decoder runs uncompiled: compiled, its large broadcasting kernels ran 25% slower)."""
from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import mlx.core as mx
import numpy as np

from skills.image_model.config import tokenizer_dir
from skills.image_model.schedule import seed_noise, times

from .model import MlxImageModel


class MlxDenoiser:
    def __init__(self, folder: Path, reuse_text_kv: bool = True, compiled: bool = False):
        from transformers import AutoTokenizer

        self.model = MlxImageModel(folder, fused_math=compiled)
        self._step = mx.compile(self._euler) if compiled else self._euler
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(folder))
        self.reuse = reuse_text_kv
        self.image_size = self.model.cfg.image_size
        self._null = self.model.prefix_kv(mx.array([self.model.cfg.null_ids()])) if reuse_text_kv else None
        self._counts = {"denoise_steps_total": 0, "body_rows_total": 0, "prefix_rows_reused_total": 0,
                        "null_prefix_reused_total": 0}
        if compiled:  # trace and build the guided step now, not in the first request (seconds)
            self.generate(self.tokenize("warm up"), 0, 1, 5.0)
            self._counts = dict.fromkeys(self._counts, 0)

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
        flat = [a for kv in prefix for a in kv] if prefix else [ids]
        for t, t_next in pairwise(times(steps, s.time_shift)):
            x = self._step(x, mx.array(t, mx.float32), mx.array(t_next - t, mx.float32),
                           mx.array(guidance, mx.float32), *flat)
            mx.eval(x)
            self._counts["denoise_steps_total"] += 1
            self._counts["body_rows_total"] += len(rows) * (suffix + (0 if prefix else s.prefix_length))
            self._counts["prefix_rows_reused_total"] += len(rows) * s.prefix_length if prefix else 0
        return model.pixels(x)[0]

    def _euler(self, x: mx.array, t: mx.array, dt: mx.array, guidance: mx.array, *state: mx.array) -> mx.array:
        """One step; `state`: the prefix's keys and values layer by layer (k0, v0, k1, ...), or the ids
        when every step runs the whole sequence; two rows (the text, the null text) are guided."""
        rows = state[0].shape[0]
        latents = mx.broadcast_to(x, (rows, *x.shape[1:]))
        if len(state) == 1:
            v = self.model.velocity(state[0], latents, t)
        else:
            v = self.model.velocity_after(list(zip(state[::2], state[1::2])), latents, t)
        if rows == 2:
            v = v[1:2] + guidance * (v[0:1] - v[1:2])
        return x + dt * v

    def _prefixes(self, ids: mx.array, guided: bool) -> list:
        if not guided:
            return self.model.prefix_kv(ids)
        self._counts["null_prefix_reused_total"] += 1
        cond = self.model.prefix_kv(ids[:1])
        return [(mx.concatenate([k, nk]), mx.concatenate([v, nv])) for (k, v), (nk, nv) in zip(cond, self._null)]
