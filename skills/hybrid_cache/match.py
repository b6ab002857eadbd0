"""What a lookup found."""

from __future__ import annotations

from dataclasses import dataclass

from .node import Node
from .snapshot import Snapshot


@dataclass(frozen=True)
class Match:
    """`length`: leading prompt tokens restorable (K/V on the path and a snapshot at `length`; 0:
    none). `common`: tokens the prompt shares with the cache at all (>= length): where it diverges.
    `nodes`: the path covering [0, length)."""

    length: int
    common: int
    nodes: tuple[Node, ...] = ()
    snapshot: Snapshot | None = None

    @property
    def hit(self) -> bool:
        return self.length > 0
