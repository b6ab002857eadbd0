"""The engine's side of skills/hybrid_cache: admit (match, wait or restore), snapshot, store, release.

With the cache off (`--no-prefix-cache`) every request starts from a cleared slot at position 0
and nothing is looked up or stored; the forward is the same either way.
"""

from __future__ import annotations

import bisect

from skills.hybrid_cache import CacheConfig, CacheStats, HybridStateCache, common_prefix

from .sequence import HybridSequence
from .state import SlotStates


class PrefixReuse:
    def __init__(self, states: SlotStates, enabled: bool, block: int, capacity_bytes: int,
                 wait_for_shared: int) -> None:
        self.states = states
        self.cache = HybridStateCache(CacheConfig(capacity_bytes, block)) if enabled else None
        self.wait_for_shared = wait_for_shared
        self.deferrals = 0  # admissions postponed for a running prefill of a shared prefix
        self._sizes: dict[str, int] = {}  # the tree's size, refreshed by the engine thread (read by /metrics)
        self._refresh()

    def admit(self, seq: HybridSequence, running: list[HybridSequence]) -> bool:
        """Restore what the cache holds of seq's prompt into its slot (at least the last prompt token
        is left to compute, for the first token's logits); False: wait for a running prefill."""
        if self.cache is None:
            self.states.clear(seq.slot)
            seq.num_computed = seq.cached_tokens = 0
            return True
        prompt = seq.prompt_ids
        match = self.cache.match(prompt, limit=len(prompt) - 1)
        if self.wait_for_shared and self._shared_soon(seq, match.length, running):
            self.deferrals += 1
            return False
        if match.hit:
            self.cache.restore(match, self.states.kv_views(seq.slot), self.states.state_views(seq.slot))
        else:
            self.states.clear(seq.slot)
        seq.pinned = self.cache.acquire(match, len(prompt))
        seq.cache_epoch = self.cache.epoch
        seq.num_computed = seq.cached_tokens = match.length
        seq.save_points = self.cache.save_points(prompt, match)
        return True

    def _shared_soon(self, seq: HybridSequence, restorable: int, running: list[HybridSequence]) -> bool:
        """Whether a running prefill shares at least `wait_for_shared` more prompt tokens with seq than
        the cache can restore; that prefill is then asked to snapshot where the two part."""
        prompt = seq.prompt_ids
        for other in running:
            if not other.prefilling or other.cache_epoch != self.cache.epoch:
                continue
            shared = min(common_prefix(prompt, other.prompt_ids), len(prompt) - 1)
            if shared - restorable < self.wait_for_shared:
                continue
            if other.num_computed < shared and shared not in other.save_points:
                bisect.insort(other.save_points, shared)
            return True
        return False

    def prompt_done(self, seq: HybridSequence) -> None:
        """seq's prompt is computed: store it (K/V from its slot, the snapshots it took)."""
        if self.cache is not None and seq.cache_epoch == self.cache.epoch:
            n = len(seq.prompt_ids)
            self.cache.insert(seq.prompt_ids, tuple(v[:n] for v in self.states.kv_views(seq.slot)), seq.snapshots)
            self._refresh()
        seq.snapshots = {}
        seq.save_points = []

    def release(self, seq: HybridSequence) -> None:
        if self.cache is not None and seq.pinned:
            self.cache.release(seq.pinned)
        seq.pinned = ()

    def reset(self, counters: bool = False) -> bool:
        """Forget every prefix (and, with `counters`, the lookup counters too: after the warm-up)."""
        if self.cache is not None:
            self.cache.reset()
            if counters:
                self.cache.stats = CacheStats()
                self.deferrals = 0
            self._refresh()
        return True

    def metrics(self) -> dict[str, int]:
        if self.cache is None:
            return {}
        stats = self.cache.stats
        return {**self._sizes, "prefix_cache_lookups": stats.lookups,
                "prefix_cache_inserted_tokens": stats.inserted_tokens,
                "prefix_cache_snapshots_stored": stats.snapshots_stored,
                "prefix_cache_evicted_nodes": stats.evicted_nodes, "prefix_cache_evicted_bytes": stats.evicted_bytes,
                "prefix_cache_deferrals": self.deferrals}

    def _refresh(self) -> None:
        if self.cache is not None:
            self._sizes = {"prefix_cache_bytes": self.cache.bytes, "prefix_cache_nodes": self.cache.nodes(),
                           "prefix_cache_snapshots": self.cache.snapshots()}
