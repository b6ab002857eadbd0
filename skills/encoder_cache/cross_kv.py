"""The decoder's cross-attention keys and values, cached per encoder frame.

An encoder-decoder's cross-attention K/V of frame t depend on that frame's encoder output alone
(moonshine_streaming: + a learned position embedding of t, an optional projection, then each
decoder layer's k and v projections). So when a chunk changes only the frames from `changed_from`
on, only those frames' K/V are recomputed; the rest stay. All streams' changed frames share one
matmul (every layer's k and v weights stacked into one matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

INITIAL_CAPACITY = 256


@dataclass(frozen=True)
class CrossProjection:
    """How an encoder frame becomes every decoder layer's cross-attention K/V."""

    position: torch.Tensor  # [max_frames, encoder hidden], added to frame t
    proj: torch.Tensor | None  # [decoder hidden, encoder hidden], or None (identity)
    w_kv: torch.Tensor  # [layers * 2 * heads * head_dim, decoder hidden]: layer 0's k, layer 0's v, layer 1's k, ...
    layers: int
    heads: int
    head_dim: int

    @property
    def max_frames(self) -> int:
        return self.position.shape[0]


class CrossKV:
    """One stream's cross K/V: `keys(layer)` and `values(layer)` are [heads, frames, head_dim]."""

    def __init__(self, p: CrossProjection) -> None:
        self.p = p
        self.frames = 0
        self.kv = torch.empty(p.layers, 2, p.heads, INITIAL_CAPACITY, p.head_dim)

    def keys(self, layer: int) -> torch.Tensor:
        return self.kv[layer, 0, :, :self.frames]

    def values(self, layer: int) -> torch.Tensor:
        return self.kv[layer, 1, :, :self.frames]

    def reserve(self, frames: int) -> None:
        if frames > self.kv.shape[3]:
            bigger = torch.empty(*self.kv.shape[:3], max(frames, 2 * self.kv.shape[3]), self.kv.shape[4])
            bigger[:, :, :, :self.frames] = self.kv[:, :, :, :self.frames]
            self.kv = bigger


def update_cross_kv(caches: list[CrossKV], encoded: list[torch.Tensor], changed_from: list[int]) -> int:
    """Bring each stream's K/V up to its encoder output `encoded[i]` ([frames, hidden]), of which
    frames from `changed_from[i]` on are new or changed; returns the frames projected."""
    p = caches[0].p if caches else None
    spans = [(c, h, f) for c, h, f in zip(caches, encoded, changed_from) if f < h.shape[0]]
    for c, h, _ in spans:
        if h.shape[0] > p.max_frames:
            raise ValueError(f"{h.shape[0]} encoder frames: the decoder's positions stop at {p.max_frames}")
    if not spans:
        return 0
    x = torch.cat([h[f:] + p.position[f:h.shape[0]] for _, h, f in spans])
    if p.proj is not None:
        x = F.linear(x, p.proj)
    kv = F.linear(x, p.w_kv).view(-1, p.layers, 2, p.heads, p.head_dim).permute(1, 2, 3, 0, 4)
    at = 0
    for c, h, f in spans:
        n = h.shape[0] - f
        c.reserve(h.shape[0])
        c.kv[:, :, :, f:h.shape[0]] = kv[:, :, :, at:at + n]
        c.frames = h.shape[0]
        at += n
    return at
