"""Shared-prefix reads in decode attention.

Running requests that share a long prompt prefix (setting C's workload: a 3456-token prefix and
unique tails) hold bit-identical K/V for it: K/V at position p is a function of tokens[0..p] only,
and the forward is split invariant (kernels.cpp), whether a request restored them from the prefix
cache or computed them. So a decode row may read those keys from another running request's slot:
rows sharing one source attend in one tile, and the prefix's K/V is read once per step for all of
them instead of once per request (at 8 requests x 3.5K keys it was ~60% of a decode step's
attention time). The numbers are the same either way; only memory traffic changes.
"""

from __future__ import annotations

from skills.hybrid_cache import common_prefix

from .sequence import HybridSequence

MIN_SHARED = 256  # shorter common prefixes are not worth a tile of their own


def assign_sources(running: list[HybridSequence]) -> None:
    """Each running request's source: the first earlier request with no source of its own whose
    prompt shares at least MIN_SHARED leading tokens with its own (the longest such), or None."""
    roots: list[HybridSequence] = []
    for seq in running:
        best, best_len = None, 0
        for root in roots:
            n = common_prefix(seq.prompt_ids, root.prompt_ids)
            if n >= MIN_SHARED and n > best_len:
                best, best_len = root, n
        seq.share_source, seq.share_len = best, best_len
        if best is None:
            roots.append(seq)


def shared_keys(seq: HybridSequence) -> tuple[int, int]:
    """(source slot, keys readable from it) for seq's decode row this step; (-1, 0) for none."""
    src = seq.share_source
    if src is None or src.slot is None or src.finish_reason is not None:
        return -1, 0
    return src.slot, min(seq.share_len, src.num_computed, seq.num_computed)
