"""Prefix caching for hybrid attention + recurrent models: a radix tree of K/V segments with
recurrent-state snapshots (see NOTE.md)."""

from .cache import CacheConfig, HybridStateCache
from .match import Match
from .node import Node
from .prefix import common_prefix
from .segment import Segment
from .snapshot import Snapshot
from .stats import CacheStats

__all__ = ["CacheConfig", "CacheStats", "HybridStateCache", "Match", "Node", "Segment", "Snapshot", "common_prefix"]
