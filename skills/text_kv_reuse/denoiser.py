"""A text-to-image engine that runs each request's text once: the prefix's keys and values (text
and begin-image, which the omni mask keeps from seeing anything after them) are computed before
the first step and every step runs only the time and image rows against them. The null text of
classifier-free guidance is the same for every request, so its keys and values are computed once
at load. Both rows of a guided step go through the body as one batch."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from skills.image_model import ImageModel, ImageRequest
from skills.image_model.model import PrefixKV
from skills.image_model.sampling import batch_ids, guide, noise, times


@dataclass(frozen=True)
class DenoiserConfig:
    reuse_text_kv: bool = True  # off: the whole sequence every step (the plain loop), for the lossless check
    cache_null_text: bool = True  # the null row's prefix kept from load (with reuse on)
    cfg_stride: int = 1  # > 1: the null row runs every cfg_stride-th step, its last velocity reused between (approximate)
    compile: bool = False  # the reuse step and the VAE through torch.compile (inductor, weights frozen), at load


class Denoiser:
    def __init__(self, model: ImageModel, tokenizer, config: DenoiserConfig = DenoiserConfig()):
        if config.cfg_stride < 1:
            raise ValueError(f"cfg_stride must be at least 1, got {config.cfg_stride}")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.image_size = model.cfg.image_size
        self._counts = {"denoise_steps_total": 0, "body_rows_total": 0, "prefix_rows_reused_total": 0,
                        "null_prefix_reused_total": 0, "null_rows_skipped_total": 0}
        with torch.inference_mode():
            self._null = model.prefix_kv(torch.tensor([model.null_ids()])) if config.cache_null_text else None
        self._step = model.velocity_after
        if config.compile and config.reuse_text_kv:
            self._compile()

    def _compile(self) -> None:
        """velocity_after and the VAE decoder through inductor with static shapes (one graph per batch of rows; with
        dynamic shapes it recompiled into slower generic code), t a tensor (a float would
        recompile per step); compiled here, on the request path, so that no request pays for it."""
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights are constants: inductor prepacks them for its matmuls
        compiled = torch.compile(self.model.velocity_after, dynamic=False)
        self.model.vae = torch.compile(self.model.vae, dynamic=False)  # 45 -> 21 ms an image on 2 EPYC cores

        def step(prefix: PrefixKV, latents: torch.Tensor, t: float) -> torch.Tensor:
            return compiled(prefix, latents, torch.tensor(t, dtype=torch.float32))

        self._step = step
        for guidance in (5.0, 1.0):  # both rows, then one
            self.generate([self.model.cfg.pad_token_id], seed=0, steps=2, guidance=guidance)
        self._counts = dict.fromkeys(self._counts, 0)

    def tokenize(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def counters(self) -> dict[str, float]:
        return dict(self._counts)

    @torch.inference_mode()
    def generate(self, token_ids: list[int], seed: int, steps: int, guidance: float) -> np.ndarray:
        request = ImageRequest(tuple(token_ids), seed, steps, guidance)
        x = noise(self.model, seed)
        schedule = times(steps, self.model.cfg.time_shift)
        prefix = self._prefixes(request) if self.config.reuse_text_kv else None
        ids = batch_ids(self.model, request)
        null_v = None
        for i, (t, t_next) in enumerate(pairwise(schedule)):
            both = request.guided and (i % self.config.cfg_stride == 0 or null_v is None)
            v = self._velocity(ids if both else ids[:1], prefix if both else _first_row(prefix), x, t)
            if request.guided:
                if both:
                    null_v = v[1:2]
                else:
                    self._counts["null_rows_skipped_total"] += 1
                    v = torch.cat([v, null_v])
            x = x + (t_next - t) * guide(v, guidance)
        return self.model.pixels(x)[0]

    def _prefixes(self, request: ImageRequest) -> PrefixKV:
        """[conditional; null] keys and values of the prefix, the null row from load where kept."""
        model = self.model
        if not request.guided or self._null is None:
            return model.prefix_kv(batch_ids(model, request))
        self._counts["null_prefix_reused_total"] += 1
        cond = model.prefix_kv(torch.tensor([model.text_ids(list(request.token_ids))]))
        return [(torch.cat([k, nk]), torch.cat([v, nv])) for (k, v), (nk, nv) in zip(cond, self._null, strict=True)]

    def _velocity(self, ids: torch.Tensor, prefix: PrefixKV | None, x: torch.Tensor, t: float) -> torch.Tensor:
        rows = ids.shape[0]
        latents = x.expand(rows, -1, -1, -1)
        self._counts["denoise_steps_total"] += 1
        suffix = 1 + self.model.cfg.image_tokens
        if prefix is None:
            self._counts["body_rows_total"] += rows * (self.model.cfg.prefix_length + suffix)
            return self.model.velocity(ids, latents, t)
        self._counts["body_rows_total"] += rows * suffix
        self._counts["prefix_rows_reused_total"] += rows * self.model.cfg.prefix_length
        return self._step(prefix, latents, t)


def _first_row(prefix: PrefixKV | None) -> PrefixKV | None:
    return None if prefix is None else [(k[:1], v[:1]) for k, v in prefix]
