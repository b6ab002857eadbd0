"""The decodes in flight, one slot each (slots 0..n-1 in use): their self-attention K/V, and a copy
of their stream's cross-attention K/V so that one masked attention serves every slot.

Every chunk restarts its stream's decode, so a slot lives for one chunk's decode. Keeping the
slots in use contiguous lets a step read all of them as one view (no gather); a finished decode's
slot is refilled by moving the last one into it (a copy of its rows only). The cross K/V copy is
made once per chunk, when the decode joins (its stream's CrossKV holds the per-frame cache).
"""

from __future__ import annotations

import torch

from skills.encoder_cache.cross_kv import CrossKV

INITIAL_TOKENS = 64  # self-attention positions per slot; doubled when a decode needs more
INITIAL_FRAMES = 256  # cross-attention frames per slot; doubled likewise


def _grown(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if size <= t.shape[dim]:
        return t
    shape = list(t.shape)
    shape[dim] = max(size, 2 * t.shape[dim])
    bigger = t.new_zeros(shape)
    bigger.narrow(dim, 0, t.shape[dim]).copy_(t)
    return bigger


class DecodeSlots:
    def __init__(self, layers: int, slots: int, heads: int, head_dim: int) -> None:
        self.k = torch.zeros(layers, slots, heads, INITIAL_TOKENS, head_dim)  # self-attention
        self.v = torch.zeros_like(self.k)
        self.cross = torch.zeros(layers, 2, slots, heads, INITIAL_FRAMES, head_dim)
        self.frames = [0] * slots  # cross-attention frames per slot

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    def reserve(self, tokens: int) -> None:
        """Room for positions 0..tokens-1 in every slot."""
        self.k, self.v = _grown(self.k, 3, tokens), _grown(self.v, 3, tokens)

    def load_cross(self, slot: int, kv: CrossKV) -> None:
        self.cross = _grown(self.cross, 4, kv.frames)
        self.cross[:, :, slot, :, :kv.frames] = kv.kv[:, :, :, :kv.frames]
        self.frames[slot] = kv.frames

    def cross_mask(self, first: int, n: int) -> torch.Tensor | None:
        """[n, 1, 1, frames] key mask for slots first..first+n-1; None when all have every frame."""
        frames = self.frames[first:first + n]
        if min(frames) == max(frames):
            return None
        return (torch.arange(max(frames))[None, :] < torch.tensor(frames)[:, None])[:, None, None]

    def move(self, src: int, dst: int, tokens: int) -> None:
        """Slot src (its first `tokens` positions, its cross K/V) into slot dst."""
        self.k[:, dst, :, :tokens] = self.k[:, src, :, :tokens]
        self.v[:, dst, :, :tokens] = self.v[:, src, :, :tokens]
        frames = self.frames[src]
        self.cross[:, :, dst, :, :frames] = self.cross[:, :, src, :, :frames]
        self.frames[dst] = frames
