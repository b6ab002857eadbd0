"""Per-layer, per-sequence state, preallocated and indexed by slot.

Every layer declares what it keeps per sequence (`StateSpec`); the pool allocates one tensor
set per layer with a leading slot dimension. An attention layer keeps K/V (`KVState`); a
recurrent layer (setting C's hybrids) would keep a fixed-size state per slot, and an
encoder-decoder's cross-attention its encoder K/V: each is one more `LayerState` class,
with the same `move` (used to keep the slots in use contiguous, see scheduler.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class LayerState(Protocol):
    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot `src`'s state (its first `length` positions, where that applies) into `dst`."""

    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class KVSpec:
    num_kv_heads: int
    head_dim: int

    def allocate(self, slots: int, max_len: int, dtype: torch.dtype) -> "KVState":
        return KVState.zeros(slots, self.num_kv_heads, max_len, self.head_dim, dtype)


StateSpec = KVSpec  # the union grows as layer kinds are added (recurrent, cross-attention)


@dataclass
class KVState:
    """K and V of one attention layer: [slots, kv_heads, max_len, head_dim] each.

    One contiguous row per slot, so a batch of slots 0..S-1 is a plain view for attention.
    Zero-filled: masked-out positions are still read by the attention kernel and must be finite.
    """

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def zeros(cls, slots: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype) -> "KVState":
        shape = (slots, kv_heads, max_len, head_dim)
        return cls(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))

    def write(self, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [tokens, kv_heads, head_dim] for tokens at (slot, position)."""
        self.k[slots, :, positions] = k
        self.v[slots, :, positions] = v

    def move(self, src: int, dst: int, length: int) -> None:
        self.k[dst, :, :length] = self.k[src, :, :length]
        self.v[dst, :, :length] = self.v[src, :, :length]

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class StatePool:
    """The states of all layers, one slot per running sequence."""

    def __init__(self, specs: list[StateSpec | None], slots: int, max_len: int, dtype: torch.dtype) -> None:
        self.slots = slots
        self.max_len = max_len
        self.layers: list[LayerState | None] = [
            None if spec is None else spec.allocate(slots, max_len, dtype) for spec in specs]

    def move(self, src: int, dst: int, length: int) -> None:
        for state in self.layers:
            if state is not None:
                state.move(src, dst, length)

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.layers if s is not None)
