"""A snapshot: the recurrent layers' state after a token prefix, as the cache keeps it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One tensor per kind of state, every layer stacked in it (e.g. all GatedDeltaNet conv states,
    all recurrent matrices). The cache owns these tensors: nothing outside it may write them, and a
    restore copies out of them (`copy_into`), never hands them over."""

    tensors: tuple[torch.Tensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def copy_into(self, out: Sequence[torch.Tensor]) -> None:
        if len(out) != len(self.tensors):
            raise ValueError(f"a snapshot of {len(self.tensors)} tensors restored into {len(out)}")
        for dst, src in zip(out, self.tensors):
            dst.copy_(src)
