"""A radix-tree node: a run of tokens, their K/V, and the snapshots taken inside the run."""

from __future__ import annotations

from dataclasses import dataclass, field

from .segment import Segment
from .snapshot import Snapshot


@dataclass(eq=False)
class Node:
    """Tokens [start, end) of every prompt through this node. `snapshots[p]` (start < p <= end)
    is the recurrent state after the first p tokens; `pins` counts running requests using it
    (never evicted while > 0); `last_used` orders eviction (least recently used first)."""

    tokens: tuple[int, ...]
    start: int
    segment: Segment | None  # None only for the root
    parent: "Node | None" = None
    children: dict[int, "Node"] = field(default_factory=dict)  # first token -> child
    snapshots: dict[int, Snapshot] = field(default_factory=dict)
    pins: int = 0
    last_used: int = 0

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    @property
    def nbytes(self) -> int:
        return (self.segment.nbytes if self.segment is not None else 0) + sum(
            s.nbytes for s in self.snapshots.values())

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def best_snapshot(self, upto: int) -> int | None:
        """The largest snapshot position <= upto in this node, or None."""
        return max((p for p in self.snapshots if p <= upto), default=None)
