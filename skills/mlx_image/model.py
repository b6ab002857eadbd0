"""skills/image_model's network in MLX, written as functions over its weights (the same
model.safetensors, read by MLX): the body over [text; begin-image; time; image patches], the
flow head, the VAE decoder. Runs in the mlx-lm environment (no torch there)."""
from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import numpy as np

from skills.image_model.config import ImageModelConfig


class MlxImageModel:
    def __init__(self, folder: Path):
        self.cfg = ImageModelConfig.load(folder)
        raw = mx.load(str(Path(folder) / "model.safetensors"))
        # Linear weights transposed once ((in, out): x @ w), convs as MLX wants them (out, kh, kw, in).
        self.w = {k: (v.transpose(0, 2, 3, 1) if v.ndim == 4 else v.T if v.ndim == 2 and not k.startswith("embed")
                      else v) for k, v in raw.items()}
        mx.eval(self.w)
        angles = self.cfg.rope_angles()
        self.cos, self.sin = mx.array(np.cos(angles).astype(np.float32)), mx.array(np.sin(angles).astype(np.float32))
        self.omni = mx.array(self.cfg.omni_mask())

    # -- pieces --------------------------------------------------------------------------------------
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
        q = self._linear(h, w + "self_attn.q_proj").reshape(b, n, s.num_attention_heads, s.head_dim).transpose(0, 2, 1, 3)
        k = self._linear(h, w + "self_attn.k_proj").reshape(b, n, s.num_key_value_heads, s.head_dim).transpose(0, 2, 1, 3)
        v = self._linear(h, w + "self_attn.v_proj").reshape(b, n, s.num_key_value_heads, s.head_dim).transpose(0, 2, 1, 3)
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        keys, values = (k, v) if prefix is None else (mx.concatenate([prefix[0], k], 2), mx.concatenate([prefix[1], v], 2))
        out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=1.0 / math.sqrt(s.head_dim), mask=mask)
        x = x + self._linear(out.transpose(0, 2, 1, 3).reshape(b, n, -1), w + "self_attn.o_proj")
        h = mx.fast.rms_norm(x, self.w[w + "post_attention_layernorm.weight"], s.rms_norm_eps)
        gate, up = self._linear(h, w + "mlp.gate_proj"), self._linear(h, w + "mlp.up_proj")
        return x + self._linear(gate * mx.sigmoid(gate) * up, w + "mlp.down_proj"), (k, v)

    def _time(self, t: float, rows: int) -> mx.array:
        half = 128
        freqs = mx.exp(-math.log(10000.0) * mx.arange(half, dtype=mx.float32) / half)
        angles = (mx.full((rows,), t, dtype=mx.float32) * 1000.0)[:, None] * freqs[None]
        feats = mx.concatenate([mx.cos(angles), mx.sin(angles)], axis=-1)
        h = self._linear(feats, "time_embed.fc1")
        return self._linear(h * mx.sigmoid(h), "time_embed.fc2")

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

    def _suffix_embeddings(self, latents: mx.array, t: float):
        c = self._time(t, latents.shape[0])
        return mx.concatenate([c[:, None], self._linear(self._patchify(latents), "image_in")], axis=1), c

    @staticmethod
    def _modulate(x, shift, scale):
        return x * (1 + scale[:, None]) + shift[:, None]

    def _head(self, hidden: mx.array, c: mx.array) -> mx.array:
        s = self.cfg
        x = self._linear(mx.fast.rms_norm(hidden, self.w["norm.weight"], s.rms_norm_eps), "head.proj_in")
        silu_c = c * mx.sigmoid(c)
        b, n, h = x.shape
        for j in range(s.head_layers):
            w = f"head.blocks.{j}."
            shift1, scale1, gate1, shift2, scale2, gate2 = mx.split(self._linear(silu_c, w + "ada"), 6, axis=-1)
            y = self._modulate(mx.fast.layer_norm(x, None, None, 1e-6), shift1, scale1)
            qkv = self._linear(y, w + "qkv").reshape(b, n, 3, s.head_heads, -1).transpose(2, 0, 3, 1, 4)
            att = mx.fast.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=1.0 / math.sqrt(h // s.head_heads))
            x = x + gate1[:, None] * self._linear(att.transpose(0, 2, 1, 3).reshape(b, n, h), w + "proj")
            y = self._linear(self._modulate(mx.fast.layer_norm(x, None, None, 1e-6), shift2, scale2), w + "fc1")
            y = 0.5 * y * (1 + mx.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y * y * y)))
            x = x + gate2[:, None] * self._linear(y, w + "fc2")
        shift, scale = mx.split(self._linear(silu_c, "head.ada_out"), 2, axis=-1)
        return self._unpatchify(self._linear(self._modulate(mx.fast.layer_norm(x, None, None, 1e-6), shift, scale),
                                             "head.proj_out"))

    # -- a step --------------------------------------------------------------------------------------
    def velocity(self, ids: mx.array, latents: mx.array, t: float) -> mx.array:
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

    def velocity_after(self, prefix: list, latents: mx.array, t: float) -> mx.array:
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
        x = self._conv(latents.transpose(0, 2, 3, 1), "vae.conv_in")
        for i in range(len(self.cfg.vae_channels)):
            w = f"vae.blocks.{i}."
            y = self._conv(nn_silu(self._channel_norm(x, w + "norm1")), w + "conv1")
            y = self._conv(nn_silu(self._channel_norm(y, w + "norm2")), w + "conv2")
            x = (self._conv(x, w + "shortcut") if w + "shortcut.weight" in self.w else x) + y
            if i < len(self.cfg.vae_channels) - 1:
                x = self._conv(mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2), f"vae.ups.{i}")
        x = mx.tanh(self._conv(nn_silu(self._channel_norm(x, "vae.norm_out")), "vae.conv_out"))
        return np.array(mx.clip(mx.round((x + 1.0) * 127.5), 0, 255).astype(mx.uint8))


def nn_silu(x: mx.array) -> mx.array:
    return x * mx.sigmoid(x)
