"""The Llama-family building blocks that hold no per-sequence state."""

from __future__ import annotations

import torch
from torch import nn

from .config import RopeConfig, inverse_frequencies
from .kernels import Kernels


class RMSNorm(nn.Module):
    """As transformers' LlamaRMSNorm: normalise in float32, cast back, then scale."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Kernels.rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + residual, norm(x + residual))."""
        return Kernels.add_rms_norm(x, residual, self.weight, self.eps)


class Rotary(nn.Module):
    """cos/sin tables for every position, gathered once per step for all layers.

    sin is stored with its first half negated (see kernels.rope); the values are identical
    to transformers' rotate_half form.
    """

    def __init__(self, rope: RopeConfig, head_dim: int, max_position: int) -> None:
        super().__init__()
        inv = inverse_frequencies(rope, head_dim)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin()
        sin[:, : head_dim // 2] *= -1
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin_signed", sin, persistent=False)
        self.half = head_dim // 2
        self._cast: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}  # the tables cast once per dtype

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, 1, head_dim] each, in the model dtype (transformers casts them the same way)."""
        if dtype not in self._cast:
            self._cast[dtype] = (self.cos.to(dtype), self.sin_signed.to(dtype))
        cos, sin = self._cast[dtype]
        return cos[positions][:, None, :], sin[positions][:, None, :]

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [rows, heads, head_dim]."""
        return Kernels.rope(x, cos, sin, self.half)


class SwiGLU(nn.Module):
    """gate and up projections fused into one matmul."""

    def __init__(self, hidden: int, intermediate: int, bias: bool) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.gate_up = nn.Linear(hidden, 2 * intermediate, bias=bias)
        self.down = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(Kernels.silu_mul(self.gate_up(x), self.intermediate))
