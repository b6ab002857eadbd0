"""The model's parts in plain torch, after Show-o2 (showlab/Show-o, `show-o2/`): a Qwen2.5-style
language-model body over [text; begin-image; time; image patches], a flow head of refiner blocks
with timestep AdaLN predicting velocity, and a Wan-style VAE decoder (2-D: one frame).

Every attention layer takes an explicit key/value prefix, so the same modules serve the plain
loop (the whole sequence every step) and a runner that keeps the text's keys and values."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImageModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(cfg: ImageModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.from_numpy(cfg.rope_angles())
    return angles.cos().float(), angles.sin().float()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + turned * sin


class Attention(nn.Module):
    def __init__(self, cfg: ImageModelConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.q_proj = nn.Linear(h, self.heads * d)
        self.k_proj = nn.Linear(h, self.kv_heads * d)
        self.v_proj = nn.Linear(h, self.kv_heads * d)
        self.o_proj = nn.Linear(self.heads * d, h, bias=False)

    def keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        return _rotate(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, tuple]:
        """x: (B, n, H) rows at the positions of `cos`/`sin`; `prefix`: (K, V) of earlier rows they
        also attend to; `mask`: (n, prefix + n) bool, True where a row may look. Returns the output
        and this call's own (K, V)."""
        b, n, _ = x.shape
        q = _rotate(self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k, v = self.keys_values(x, cos, sin)
        keys, values = (k, v) if prefix is None else (torch.cat([prefix[0], k], 2), torch.cat([prefix[1], v], 2))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1)), (k, v)


class Mlp(nn.Module):
    def __init__(self, h: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(h, inner, bias=False)
        self.up_proj = nn.Linear(h, inner, bias=False)
        self.down_proj = nn.Linear(inner, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ImageModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Mlp(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, mask, prefix=None):
        attended, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, prefix)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), kv


def timestep_features(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal features of t * 1000 (t in [0, 1]), as DiT-style timestep embedders take them."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, h: int, features: int = 256):
        super().__init__()
        self.features = features
        self.fc1 = nn.Linear(features, h)
        self.fc2 = nn.Linear(h, h)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(timestep_features(t, self.features))))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class HeadBlock(nn.Module):
    """A refiner block: full self-attention over the image tokens and an MLP, each under AdaLN
    (shift, scale, gate) from the timestep."""

    def __init__(self, h: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(h, 3 * h)
        self.proj = nn.Linear(h, h)
        self.norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(h, 4 * h)
        self.fc2 = nn.Linear(4 * h, h)
        self.ada = nn.Linear(h, 6 * h)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        q, k, v = self.qkv(modulate(self.norm1(x), shift1, scale1)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, h)
        x = x + gate1[:, None] * self.proj(attended)
        return x + gate2[:, None] * self.fc2(F.gelu(self.fc1(modulate(self.norm2(x), shift2, scale2)), approximate="tanh"))


class FlowHead(nn.Module):
    def __init__(self, cfg: ImageModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.proj_in = nn.Linear(h, h)
        self.blocks = nn.ModuleList(HeadBlock(h, cfg.head_heads) for _ in range(cfg.head_layers))
        self.norm_out = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(h, 2 * h)
        self.proj_out = nn.Linear(h, cfg.patch_dim)

    def forward(self, hidden: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(hidden)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=-1)
        return self.proj_out(modulate(self.norm_out(x), shift, scale))


def patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/p * w/p, C * p * p), patches in row-major order."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, c: int, size: int, p: int) -> torch.Tensor:
    b = tokens.shape[0]
    n = size // p
    x = tokens.view(b, n, n, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, size, size)


class ChannelRMSNorm(nn.Module):
    """RMS over channels of a (B, C, H, W) map, as Wan's VAE normalises."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * math.sqrt(x.shape[1]) * self.weight[None, :, None, None]


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = ChannelRMSNorm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = ChannelRMSNorm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.silu(self.norm1(x)))
        return self.shortcut(x) + self.conv2(F.silu(self.norm2(y)))


class VaeDecoder(nn.Module):
    """Latents (B, 16, h, w) -> pixels (B, 3, 8h, 8w) in [-1, 1]: a residual block per stage, 2x
    nearest upsampling and a conv between stages."""

    def __init__(self, cfg: ImageModelConfig):
        super().__init__()
        chans = cfg.vae_channels
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(chans[max(i - 1, 0)], c) for i, c in enumerate(chans))
        self.ups = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in chans[:-1])
        self.norm_out = ChannelRMSNorm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The last conv's output, before tanh."""
        x = self.conv_in(z)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.ups):
                x = self.ups[i](F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(x)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.logits(z))
