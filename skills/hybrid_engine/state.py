"""Per-slot state of every running sequence: attention K/V and GatedDeltaNet conv + recurrent state.

Preallocated (zero pages until touched) and indexed by slot; a sequence owns its slot from
admission to finish. Attention layers keep K/V per position: V [slots, kv_heads, max_len,
head_dim], K transposed [slots, kv_heads, head_dim, max_len] (the attention kernel's scores run
over contiguous positions); GatedDeltaNet layers keep a fixed-size state per slot: the last kernel-1 conv inputs
[linear_layers, slots, kernel-1, conv_dim] and the recurrent matrix [linear_layers, slots, heads,
key_dim, value_dim], updated in place every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import HybridConfig

KEY_VEC = 16


@dataclass
class SlotStates:
    keys: list[torch.Tensor]  # per attention layer
    values: list[torch.Tensor]
    conv: torch.Tensor
    recurrent: torch.Tensor

    @classmethod
    def allocate(cls, cfg: HybridConfig, slots: int, max_len: int) -> "SlotStates":
        max_len = -(-max_len // KEY_VEC) * KEY_VEC  # the attention kernel reads whole vectors of keys
        k = (slots, cfg.num_kv_heads, cfg.head_dim, max_len)
        v = (slots, cfg.num_kv_heads, max_len, cfg.head_dim)
        n = cfg.num_attention_layers
        return cls([torch.zeros(k) for _ in range(n)], [torch.zeros(v) for _ in range(n)],
                   torch.zeros(cfg.num_linear_layers, slots, cfg.conv_kernel - 1, cfg.conv_dim),
                   torch.zeros(cfg.num_linear_layers, slots, cfg.value_heads, cfg.key_head_dim, cfg.value_head_dim))

    def clear(self, slot: int) -> None:
        """A fresh sequence's recurrent state (K/V need no clearing: only positions written are read)."""
        self.conv[:, slot].zero_()
        self.recurrent[:, slot].zero_()

    def kv_views(self, slot: int) -> tuple[torch.Tensor, ...]:
        """The slot's K and V of every attention layer, token axis first: [max_len, kv_heads, head_dim] views."""
        views = []
        for k, v in zip(self.keys, self.values):
            views += [k[slot].permute(2, 0, 1), v[slot].transpose(0, 1)]
        return tuple(views)

    def state_views(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The slot's GatedDeltaNet states (views): conv [layers, kernel-1, conv_dim], recurrent [layers, ...]."""
        return self.conv[:, slot], self.recurrent[:, slot]

    def nbytes(self) -> int:
        return sum(t.nbytes for t in [*self.keys, *self.values, self.conv, self.recurrent])


@dataclass
class SaveBuffers:
    """GatedDeltaNet states captured mid-step at save rows: [linear_layers, saves, ...] each."""

    conv: torch.Tensor
    recurrent: torch.Tensor

    @classmethod
    def allocate(cls, cfg: HybridConfig, saves: int) -> "SaveBuffers":
        return cls(torch.zeros(cfg.num_linear_layers, saves, cfg.conv_kernel - 1, cfg.conv_dim),
                   torch.zeros(cfg.num_linear_layers, saves, cfg.value_heads, cfg.key_head_dim, cfg.value_head_dim))

    def take(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Save i as fresh tensors: conv [layers, kernel-1, conv_dim], recurrent [layers, heads, dk, dv]."""
        return self.conv[:, i].clone(), self.recurrent[:, i].clone()
