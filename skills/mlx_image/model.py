"""skills/image_model's network in MLX, written as functions over its weights (the same
model.safetensors, read by MLX): the body over [text; begin-image; time; image patches], the
flow head, the VAE decoder. Runs in the mlx-lm environment (no torch there)."""
from __future__ import annotations

import math
from itertools import accumulate
from pathlib import Path

import mlx.core as mx
import numpy as np

from skills.image_model.config import ImageModelConfig

from . import fused_math


class MlxImageModel:
    """`fused_math`: exp, sigmoid, tanh and softmax as skills/mlx_image/fused_math's arithmetic (for a
    compiled caller, where they fuse and run ~6x faster on mlx[cpu]) instead of MLX's own kernels."""

    def __init__(self, folder: Path, fused_math: bool = False):
        self.cfg = ImageModelConfig.load(folder)
        self.fused = fused_math
        raw = mx.load(str(Path(folder) / "model.safetensors"))
        # Linear weights transposed once ((in, out): x @ w), convs as MLX wants them (out, kh, kw, in).
        self.w = {k: (v.transpose(0, 2, 3, 1) if v.ndim == 4 else v.T if v.ndim == 2 and not k.startswith("embed")
                      else v) for k, v in raw.items()}
        if fused_math:
            self._join_projections()
        mx.eval(self.w)
        angles = self.cfg.rope_angles()
        self.cos, self.sin = mx.array(np.cos(angles).astype(np.float32)), mx.array(np.sin(angles).astype(np.float32))
        self.omni = mx.array(self.cfg.omni_mask())

    def _join_projections(self) -> None:
        """One matmul for q, k and v and one for gate and up (fewer, wider BLAS calls per layer)."""
        for i in range(self.cfg.num_hidden_layers):
            a, m = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
            self.w[a + "qkv.weight"] = mx.concatenate([self.w[a + p + "_proj.weight"] for p in "qkv"], axis=1)
            self.w[a + "qkv.bias"] = mx.concatenate([self.w[a + p + "_proj.bias"] for p in "qkv"])
            self.w[m + "gate_up.weight"] = mx.concatenate([self.w[m + p + "_proj.weight"] for p in ("gate", "up")], 1)

    # -- pieces --------------------------------------------------------------------------------------
    def _silu(self, x: mx.array) -> mx.array:
        return fused_math.silu(x) if self.fused else x * mx.sigmoid(x)

    def _tanh(self, x: mx.array) -> mx.array:
        return fused_math.tanh(x) if self.fused else mx.tanh(x)

    def _attention(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None = None) -> mx.array:
        scale = 1.0 / math.sqrt(q.shape[-1])
        if not self.fused:
            return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        b, heads, n, d = q.shape
        groups = heads // k.shape[1]  # grouped-query heads: each key/value head serves `groups` query heads
        q = q.reshape(b, k.shape[1], groups, n, d)
        scores = (q * scale) @ k[:, :, None].swapaxes(-1, -2)
        if mask is not None:
            scores = mx.where(mask, scores, -1e30)
        return (fused_math.softmax(scores) @ v[:, :, None]).reshape(b, heads, n, d)

    def _linear(self, x: mx.array, name: str) -> mx.array:
        y = x @ self.w[name + ".weight"]
        bias = self.w.get(name + ".bias")
        return y + bias if bias is not None else y

    @staticmethod
    def _rotate(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        half = x.shape[-1] // 2
        return x * cos + mx.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin

    def _layer(self, i: int, x: mx.array, cos, sin, mask, prefix=None):
        s, w = self.cfg, f"layers.{i}."
        b, n, _ = x.shape
        h = mx.fast.rms_norm(x, self.w[w + "input_layernorm.weight"], s.rms_norm_eps)
        heads = (s.num_attention_heads, s.num_key_value_heads, s.num_key_value_heads)
        if w + "self_attn.qkv.weight" in self.w:
            cuts = list(accumulate(count * s.head_dim for count in heads[:2]))
            q, k, v = mx.split(self._linear(h, w + "self_attn.qkv"), cuts, axis=-1)
        else:
            q, k, v = (self._linear(h, w + f"self_attn.{p}_proj") for p in "qkv")
        q, k, v = (y.reshape(b, n, count, s.head_dim).transpose(0, 2, 1, 3) for y, count in zip((q, k, v), heads))
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        keys, values = (k, v) if prefix is None else (mx.concatenate([prefix[0], k], 2), mx.concatenate([prefix[1], v], 2))
        out = self._attention(q, keys, values, mask)
        x = x + self._linear(out.transpose(0, 2, 1, 3).reshape(b, n, -1), w + "self_attn.o_proj")
        h = mx.fast.rms_norm(x, self.w[w + "post_attention_layernorm.weight"], s.rms_norm_eps)
        if w + "mlp.gate_up.weight" in self.w:
            gate, up = mx.split(self._linear(h, w + "mlp.gate_up"), 2, axis=-1)
        else:
            gate, up = self._linear(h, w + "mlp.gate_proj"), self._linear(h, w + "mlp.up_proj")
        return x + self._linear(self._silu(gate) * up, w + "mlp.down_proj"), (k, v)

    def _time(self, t: float, rows: int) -> mx.array:
        half = 128
        freqs = mx.exp(-math.log(10000.0) * mx.arange(half, dtype=mx.float32) / half)
        angles = (mx.broadcast_to(mx.array(t, dtype=mx.float32), (rows,)) * 1000.0)[:, None] * freqs[None]
        feats = mx.concatenate([mx.cos(angles), mx.sin(angles)], axis=-1)
        return self._linear(self._silu(self._linear(feats, "time_embed.fc1")), "time_embed.fc2")

    def _patchify(self, latents: mx.array) -> mx.array:
        b, c, h, w = latents.shape
        p = self.cfg.patch_size
        x = latents.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def _unpatchify(self, tokens: mx.array) -> mx.array:
        s = self.cfg
        n = s.latent_size // s.patch_size
        x = tokens.reshape(tokens.shape[0], n, n, s.latent_channels, s.patch_size, s.patch_size).transpose(0, 3, 1, 4, 2, 5)
        return x.reshape(tokens.shape[0], s.latent_channels, s.latent_size, s.latent_size)

    def _prefix_embeddings(self, ids: mx.array) -> mx.array:
        text = self.w["embed_tokens.weight"][ids]
        marker = mx.broadcast_to(self.w["begin_image"], (ids.shape[0], 1, self.cfg.hidden_size))
        return mx.concatenate([text, marker], axis=1)

    def _suffix_embeddings(self, latents: mx.array, t: float | mx.array):
        c = self._time(t, latents.shape[0])
        return mx.concatenate([c[:, None], self._linear(self._patchify(latents), "image_in")], axis=1), c

    @staticmethod
    def _modulate(x, shift, scale):
        return x * (1 + scale[:, None]) + shift[:, None]

    def _head(self, hidden: mx.array, c: mx.array) -> mx.array:
        s = self.cfg
        x = self._linear(mx.fast.rms_norm(hidden, self.w["norm.weight"], s.rms_norm_eps), "head.proj_in")
        silu_c = self._silu(c)
        b, n, h = x.shape
        for j in range(s.head_layers):
            w = f"head.blocks.{j}."
            shift1, scale1, gate1, shift2, scale2, gate2 = mx.split(self._linear(silu_c, w + "ada"), 6, axis=-1)
            y = self._modulate(mx.fast.layer_norm(x, None, None, 1e-6), shift1, scale1)
            qkv = self._linear(y, w + "qkv").reshape(b, n, 3, s.head_heads, -1).transpose(2, 0, 3, 1, 4)
            att = self._attention(qkv[0], qkv[1], qkv[2])
            x = x + gate1[:, None] * self._linear(att.transpose(0, 2, 1, 3).reshape(b, n, h), w + "proj")
            y = self._linear(self._modulate(mx.fast.layer_norm(x, None, None, 1e-6), shift2, scale2), w + "fc1")
            y = 0.5 * y * (1 + self._tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y * y * y)))
            x = x + gate2[:, None] * self._linear(y, w + "fc2")
        shift, scale = mx.split(self._linear(silu_c, "head.ada_out"), 2, axis=-1)
        return self._unpatchify(self._linear(self._modulate(mx.fast.layer_norm(x, None, None, 1e-6), shift, scale),
                                             "head.proj_out"))

    # -- a step --------------------------------------------------------------------------------------
    def velocity(self, ids: mx.array, latents: mx.array, t: float | mx.array) -> mx.array:
        """The plain step: the whole sequence under the omni mask."""
        suffix, c = self._suffix_embeddings(latents, t)
        x = mx.concatenate([self._prefix_embeddings(ids), suffix], axis=1)
        for i in range(self.cfg.num_hidden_layers):
            x, _ = self._layer(i, x, self.cos, self.sin, self.omni)
        return self._head(x[:, self.cfg.prefix_length + 1:], c)

    def prefix_kv(self, ids: mx.array) -> list:
        p = self.cfg.prefix_length
        x = self._prefix_embeddings(ids)
        out = []
        for i in range(self.cfg.num_hidden_layers):
            x, kv = self._layer(i, x, self.cos[:p], self.sin[:p], self.omni[:p, :p])
            out.append(kv)
        mx.eval(out)
        return out

    def velocity_after(self, prefix: list, latents: mx.array, t: float | mx.array) -> mx.array:
        p = self.cfg.prefix_length
        x, c = self._suffix_embeddings(latents, t)
        for i, kv in enumerate(prefix):
            x, _ = self._layer(i, x, self.cos[p:], self.sin[p:], None, kv)
        return self._head(x[:, 1:], c)

    # -- pixels --------------------------------------------------------------------------------------
    def _channel_norm(self, x: mx.array, name: str) -> mx.array:
        norm = mx.maximum(mx.sqrt(mx.sum(x * x, axis=-1, keepdims=True)), 1e-12)
        return x / norm * math.sqrt(x.shape[-1]) * self.w[name + ".weight"]

    def _conv(self, x: mx.array, name: str) -> mx.array:
        w = self.w[name + ".weight"]
        return mx.conv2d(x, w, padding=w.shape[1] // 2) + self.w[name + ".bias"]

    def pixels(self, latents: mx.array) -> np.ndarray:
        """Latents (B, C, h, w) -> uint8 images (B, H, W, 3), channels last all the way."""
        return np.array(self.decode(latents))

    def decode(self, latents: mx.array) -> mx.array:
        """`pixels` as a lazy MLX array, for a caller that compiles it."""
        x = self._conv(latents.transpose(0, 2, 3, 1), "vae.conv_in")
        for i in range(len(self.cfg.vae_channels)):
            w = f"vae.blocks.{i}."
            y = self._conv(self._silu(self._channel_norm(x, w + "norm1")), w + "conv1")
            y = self._conv(self._silu(self._channel_norm(y, w + "norm2")), w + "conv2")
            x = (self._conv(x, w + "shortcut") if w + "shortcut.weight" in self.w else x) + y
            if i < len(self.cfg.vae_channels) - 1:
                x = self._conv(mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2), f"vae.ups.{i}")
        x = self._tanh(self._conv(self._silu(self._channel_norm(x, "vae.norm_out")), "vae.conv_out"))
        return mx.clip(mx.round((x + 1.0) * 127.5), 0, 255).astype(mx.uint8)
