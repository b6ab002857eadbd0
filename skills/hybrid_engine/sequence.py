"""A request inside the engine: engine_core's Sequence plus what the prefix cache needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from skills.engine_core.sequence import Sequence


@dataclass(eq=False)
class HybridSequence(Sequence):
    cached_tokens: int = 0  # prompt tokens restored from the prefix cache (not computed)
    # Positions p (state after prompt[:p]) to snapshot while prefilling, and the snapshots taken so far.
    save_points: list[int] = field(default_factory=list)
    snapshots: dict[int, tuple] = field(default_factory=dict)
    pinned: tuple = ()  # prefix-cache nodes held while the request runs
    cache_epoch: int = -1  # the cache generation it matched against (a reset starts a new one)
    # Decode attention may read the first share_len keys from share_source's slot (sharing.py).
    share_source: "HybridSequence | None" = None
    share_len: int = 0
