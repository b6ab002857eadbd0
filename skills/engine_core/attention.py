"""Grouped-query self-attention over the slot-indexed KV state.

Grouped queries are folded into the query axis: the `group` query heads that share a KV
head become `group` query rows of that KV head, so SDPA never needs K/V repeated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batch import DecodeBatch, ForwardBatch, PrefillSpan
from .config import ModelConfig
from .kernels import Kernels
from .layers import Rotary
from .state import KVSpec, KVState


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.group = cfg.group_size
        self.q_size, self.kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.attention_bias)

    def state_spec(self) -> KVSpec:
        return KVSpec(self.kv_heads, self.head_dim)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, state: KVState, rotary: Rotary,
                cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        qkv = self.qkv(x)
        qk = rotary.apply(qkv[:, : self.q_size + self.kv_size].view(rows, self.heads + self.kv_heads, self.head_dim),
                          cos, sin)
        q, k = qk[:, : self.heads], qk[:, self.heads:]
        v = qkv[:, self.q_size + self.kv_size:].view(rows, self.kv_heads, self.head_dim)
        state.write(batch.slots, batch.positions, k, v)
        q = q.view(rows, self.kv_heads, self.group, self.head_dim)
        if batch.rows_alone:
            out = Kernels.row_attention(q, state.k, state.v, batch.slots, batch.positions)
        elif not batch.prefills:
            out = self._decode(q, batch.decode, state)
        else:
            parts = [] if batch.decode is None else [self._decode(q[: batch.num_decodes], batch.decode, state)]
            parts += [self._prefill(q[p.row: p.row + p.length], p, state) for p in batch.prefills]
            out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return self.o(out.reshape(rows, self.q_size))

    def _decode(self, q: torch.Tensor, d: DecodeBatch, state: KVState) -> torch.Tensor:
        """q: [decodes, kv_heads, group, head_dim] -> the same shape."""
        k, v = state.k[: d.num_slots, :, : d.max_len], state.v[: d.num_slots, :, : d.max_len]
        if d.dense:
            return Kernels.decode_attention(q.contiguous(), k, v, d.mask)
        full = q.new_zeros((d.num_slots, *q.shape[1:]))
        full[d.slots] = q
        return Kernels.decode_attention(full, k, v, d.mask)[d.slots]

    def _prefill(self, q: torch.Tensor, p: PrefillSpan, state: KVState) -> torch.Tensor:
        """q: [length, kv_heads, group, head_dim] -> the same shape."""
        end = p.end
        k, v = state.k[p.slot: p.slot + 1, :, :end], state.v[p.slot: p.slot + 1, :, :end]
        folded = q.permute(1, 2, 0, 3).reshape(1, self.kv_heads, self.group * p.length, self.head_dim)
        pad = self.group * (p.query_rows - p.length)
        if pad > 0:  # a fixed query count (verify chunks): each row's numerics independent of the chunk length
            folded = F.pad(folded, (0, 0, 0, pad))
        out = F.scaled_dot_product_attention(folded, k, v, attn_mask=p.mask, is_causal=p.mask is None)
        if pad > 0:
            out = out[:, :, : self.group * p.length]
        return out.reshape(self.kv_heads, self.group, p.length, self.head_dim).permute(2, 0, 1, 3)
