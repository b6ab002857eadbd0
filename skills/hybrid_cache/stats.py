"""The cache's counters (cumulative) and size (current)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class CacheStats:
    lookups: int = 0  # requests that acquired a match (hit or not)
    query_tokens: int = 0  # their prompt tokens
    hit_tokens: int = 0  # tokens restored
    inserts: int = 0
    inserted_tokens: int = 0  # tokens whose K/V were new to the cache
    snapshots_stored: int = 0
    splits: int = 0
    evicted_nodes: int = 0
    evicted_bytes: int = 0
    resets: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
