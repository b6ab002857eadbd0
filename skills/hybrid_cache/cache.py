"""The hybrid state cache: prefix reuse for models whose layers keep attention K/V per token AND
a fixed-size recurrent state (GatedDeltaNet, Mamba) that cannot be cut back to an earlier token.

A radix tree over token runs holds each run's K/V (`Segment`) and, at chosen positions,
`Snapshot`s of the recurrent state. A prompt can restore position p only where a snapshot at p
exists on its path, so snapshots are taken where later prompts will need them:
- every `block` tokens (for prompts that share a prefix not seen as such before),
- at the end of each prompt, and one token before it (a repeat of the same prompt still computes
  its last token, for the logits),
- at the point where a new prompt diverges from the cached path: the node is split there and
  the new prompt snapshots that position while it prefills, so the NEXT prompt sharing that
  prefix restores all of it, whatever the block grid.
`save_points` tells the engine which positions to snapshot for a prompt; `insert` stores the
prompt when its prefill is done. Restores copy out (the engine steps its state in place; the
cache is never mutated by a request). Eviction: by bytes, least recently used leaf first, never
a node pinned by a running request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .match import Match
from .node import Node
from .prefix import common_prefix
from .segment import Segment
from .snapshot import Snapshot
from .stats import CacheStats
from .tree import RadixTree


@dataclass(frozen=True)
class CacheConfig:
    capacity_bytes: int = 1 << 30
    block: int = 64  # snapshot every this many tokens

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ValueError("block must be positive")


class HybridStateCache:
    def __init__(self, cfg: CacheConfig) -> None:
        self.cfg = cfg
        self.tree = RadixTree()
        self.stats = CacheStats()
        self.bytes = 0
        self.epoch = 0  # bumped by reset: requests matched before it must not insert after it
        self._clock = 0

    # --- lookup ---

    def match(self, tokens: Sequence[int], limit: int | None = None) -> Match:
        """The longest prefix of `tokens` (at most `limit` tokens) with K/V and a snapshot; no side effects."""
        tokens = tuple(tokens)
        limit = len(tokens) if limit is None else min(limit, len(tokens))
        path, common = self.tree.walk(tokens)
        best, depth, snapshot = 0, 0, None
        for i, node in enumerate(path):
            p = node.best_snapshot(min(node.end, common, limit))
            if p is not None and p > best:
                best, depth, snapshot = p, i + 1, node.snapshots[p]
        return Match(best, common, tuple(path[:depth]), snapshot)

    def acquire(self, match: Match, query_tokens: int) -> tuple[Node, ...]:
        """A request takes `match`: its path is pinned (release it when the request ends) and counted."""
        self.stats.lookups += 1
        self.stats.query_tokens += query_tokens
        self.stats.hit_tokens += match.length
        for node in match.nodes:
            node.pins += 1
        self._touch(match.nodes)
        return match.nodes

    def release(self, nodes: Sequence[Node]) -> None:
        for node in nodes:
            node.pins -= 1

    def restore(self, match: Match, kv_out: Sequence[torch.Tensor], state_out: Sequence[torch.Tensor]) -> None:
        """Copy the match's K/V into kv_out[i][0:length] and its snapshot into state_out (copy-on-restore)."""
        if not match.hit:
            raise ValueError("nothing to restore")
        for node in match.nodes:
            count = min(node.end, match.length) - node.start
            if count > 0:
                node.segment.copy_into(kv_out, node.start, count)
        match.snapshot.copy_into(state_out)

    def save_points(self, tokens: Sequence[int], match: Match) -> list[int]:
        """Positions (state after tokens[:p]) the engine should snapshot while prefilling `tokens`
        from match.length: block boundaries, the divergence point, the prompt's end and the token
        before it; those already stored on the path are left out."""
        n, start, block = len(tokens), match.length, self.cfg.block
        wanted = set(range((start // block + 1) * block, n + 1, block)) | {n, n - 1, match.common}
        wanted = {p for p in wanted if start < p <= n}
        if not wanted:
            return []
        path, common = self.tree.walk(tuple(tokens))
        for node in path:
            wanted -= {p for p in node.snapshots if p <= common}
        return sorted(wanted)

    # --- store ---

    def insert(self, tokens: Sequence[int], kv: Sequence[torch.Tensor],
               snapshots: Mapping[int, Sequence[torch.Tensor]]) -> None:
        """Store a prompt: kv[i][0:len(tokens)] its K/V (views: copied where new to the cache),
        snapshots {p: tensors} states after tokens[:p] (taken over: the caller must not write them
        afterwards). The path is split where the prompt leaves it."""
        tokens = tuple(tokens)
        n = len(tokens)
        node, pos, path = self.tree.root, 0, []
        while pos < n:
            child = node.children.get(tokens[pos])
            if child is None:
                child = self.tree.add_leaf(node, tokens[pos:], Segment.copy_of(kv, pos, n))
                self.bytes += child.nbytes
                self.stats.inserted_tokens += n - pos
            else:
                k = common_prefix(child.tokens, tokens[pos:pos + len(child.tokens)])
                if k < len(child.tokens):
                    child = self.tree.split(child, child.start + k)
                    self.stats.splits += 1
            path.append(child)
            node, pos = child, child.end
        for p, tensors in snapshots.items():
            holder = next((m for m in path if m.start < p <= m.end), None)
            if holder is not None and p not in holder.snapshots:
                holder.snapshots[p] = Snapshot(tuple(tensors))
                self.bytes += holder.snapshots[p].nbytes
                self.stats.snapshots_stored += 1
        self.stats.inserts += 1
        self._touch(path)
        self.evict()

    # --- memory ---

    def evict(self) -> None:
        """Drop least recently used unpinned leaves until the cache fits its budget."""
        while self.bytes > self.cfg.capacity_bytes:
            leaves = [m for m in self.tree.nodes() if m.is_leaf and m.pins == 0]
            if not leaves:
                return
            victim = min(leaves, key=lambda m: m.last_used)
            self.tree.remove_leaf(victim)
            self.bytes -= victim.nbytes
            self.stats.evicted_nodes += 1
            self.stats.evicted_bytes += victim.nbytes

    def reset(self) -> None:
        """Forget everything (running requests keep their own copies; their pins are on the old tree)."""
        self.tree = RadixTree()
        self.bytes = 0
        self.epoch += 1
        self.stats.resets += 1

    def nodes(self) -> int:
        return sum(1 for _ in self.tree.nodes())

    def snapshots(self) -> int:
        return sum(len(m.snapshots) for m in self.tree.nodes())

    def _touch(self, nodes: Sequence[Node]) -> None:
        self._clock += 1
        for node in nodes:
            node.last_used = self._clock
