"""`ImageModel`: the whole network, with the two ways of running a denoising step.

The sequence of one row is [text (text_length); begin-image; time; image patches]. The omni mask:
the text and begin-image are causal among themselves and never see what follows; the time token
and the image patches see the whole text and each other (full attention inside the image). So
the first `prefix_length` rows' keys and values are the same at every step of a request.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import ImageModelConfig
from .modules import DecoderLayer, FlowHead, RMSNorm, TimestepEmbedder, VaeDecoder, patchify, rope_tables, unpatchify

PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (K, V) of shape (B, kv_heads, prefix, head_dim)


class ImageModel(nn.Module):
    def __init__(self, cfg: ImageModelConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h)
        self.begin_image = nn.Parameter(torch.zeros(h))
        self.time_embed = TimestepEmbedder(h)
        self.image_in = nn.Linear(cfg.patch_dim, h)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.head = FlowHead(cfg)
        self.vae = VaeDecoder(cfg)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("omni_mask", torch.from_numpy(cfg.omni_mask()), persistent=False)

    # -- the text ------------------------------------------------------------------------------------
    def text_ids(self, token_ids: list[int]) -> list[int]:
        return self.cfg.text_ids(token_ids)

    def null_ids(self) -> list[int]:
        return self.cfg.null_ids()

    def _prefix_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        text = self.embed_tokens(ids)
        marker = self.begin_image.expand(ids.shape[0], 1, -1)
        return torch.cat([text, marker], dim=1)

    def _suffix_embeddings(self, latents: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = latents.shape[0]
        c = self.time_embed(torch.as_tensor(t, dtype=torch.float32).expand(b))
        patches = self.image_in(patchify(latents, self.cfg.patch_size))
        return torch.cat([c[:, None], patches], dim=1), c

    # -- a step --------------------------------------------------------------------------------------
    def velocity(self, ids: torch.Tensor, latents: torch.Tensor, t: float) -> torch.Tensor:
        """The plain step: the whole sequence through the body under the omni mask. ids (B, text_length),
        latents (B, C, h, w) at time t -> velocity (B, C, h, w)."""
        suffix, c = self._suffix_embeddings(latents, t)
        x = torch.cat([self._prefix_embeddings(ids), suffix], dim=1)
        for layer in self.layers:
            x, _ = layer(x, self.rope_cos, self.rope_sin, self.omni_mask)
        return self._head(x[:, self.cfg.prefix_length + 1:], c)

    def prefix_kv(self, ids: torch.Tensor) -> PrefixKV:
        """Each layer's keys and values of the text and begin-image rows (causal among themselves):
        what every step of a request shares."""
        p = self.cfg.prefix_length
        x = self._prefix_embeddings(ids)
        cos, sin = self.rope_cos[:p], self.rope_sin[:p]
        mask = self.omni_mask[:p, :p]
        out = []
        for layer in self.layers:
            x, kv = layer(x, cos, sin, mask)
            out.append(kv)
        return out

    def velocity_after(self, prefix: PrefixKV, latents: torch.Tensor, t: float) -> torch.Tensor:
        """The same step with the prefix's keys and values given: only the time and image rows run."""
        p = self.cfg.prefix_length
        x, c = self._suffix_embeddings(latents, t)
        cos, sin = self.rope_cos[p:], self.rope_sin[p:]
        for layer, kv in zip(self.layers, prefix, strict=True):
            x, _ = layer(x, cos, sin, None, kv)
        return self._head(x[:, 1:], c)

    def _head(self, image_hidden: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        tokens = self.head(self.norm(image_hidden), c)
        return unpatchify(tokens, cfg.latent_channels, cfg.latent_size, cfg.patch_size)

    # -- pixels --------------------------------------------------------------------------------------
    def pixels(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (B, C, h, w) -> uint8 images (B, H, W, 3)."""
        x = self.vae(latents)
        return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

