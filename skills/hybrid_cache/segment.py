"""A segment: the per-token tensors (attention K/V) of one radix node's run of tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Segment:
    """Per-token tensors, token axis first, owned by the cache (copied in, copied out)."""

    tensors: tuple[torch.Tensor, ...]

    @classmethod
    def copy_of(cls, views: Sequence[torch.Tensor], start: int, end: int) -> "Segment":
        """Copies of views[i][start:end]: the caller's buffers can change afterwards."""
        return cls(tuple(v[start:end].clone() for v in views))

    def __len__(self) -> int:
        return self.tensors[0].shape[0] if self.tensors else 0

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def split(self, at: int) -> tuple["Segment", "Segment"]:
        """Tokens [0, at) and [at, len), each in tensors of its own (so either can be freed)."""
        return (Segment(tuple(t[:at].clone() for t in self.tensors)),
                Segment(tuple(t[at:].clone() for t in self.tensors)))

    def copy_into(self, out: Sequence[torch.Tensor], offset: int, count: int) -> None:
        """out[i][offset:offset + count] = this segment's first `count` tokens."""
        for dst, src in zip(out, self.tensors, strict=True):
            dst[offset:offset + count].copy_(src[:count])
