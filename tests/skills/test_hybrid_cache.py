"""skills/hybrid_cache: radix match / split / insert, snapshots where prompts end and diverge,
copy-on-restore isolation, eviction by bytes that never touches a pinned node, counters.

K/V here is one tensor per token holding its position (so a restore shows which tokens it
copied), a snapshot one tensor holding the position it was taken at."""

from __future__ import annotations

import torch

from skills.hybrid_cache import CacheConfig, HybridStateCache, Snapshot, common_prefix

BLOCK = 16


def kv(n: int) -> tuple[torch.Tensor, ...]:
    """Per-token tensors for positions 0..n-1: K [n, 2] = (p, p), V [n] = -p."""
    pos = torch.arange(n, dtype=torch.float32)
    return torch.stack([pos, pos], dim=1), -pos


def snaps(*positions: int) -> dict[int, tuple[torch.Tensor, ...]]:
    return {p: (torch.full((3,), float(p)),) for p in positions}


def store(cache: HybridStateCache, tokens: list[int], *positions: int) -> None:
    cache.insert(tokens, kv(len(tokens)), snaps(*positions))


def restored(cache: HybridStateCache, tokens: list[int], limit: int | None = None):
    """(match, K out, V out, state out) after restoring the best match of tokens into fresh buffers."""
    match = cache.match(tokens, limit)
    k, v, state = torch.full((len(tokens), 2), -7.0), torch.full((len(tokens),), 7.0), torch.zeros(3)
    if match.hit:
        cache.restore(match, (k, v), (state,))
    return match, k, v, state


def test_common_prefix() -> None:
    assert common_prefix((1, 2, 3), (1, 2, 4)) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix((), (1,)) == 0
    a = tuple(range(1000))
    assert common_prefix(a, a[:777] + (-1,)) == 777


def test_match_needs_a_snapshot_and_restores_kv_and_state() -> None:
    cache = HybridStateCache(CacheConfig(1 << 20, BLOCK))
    a = list(range(100, 140))
    store(cache, a, 16, 32, 40)
    assert cache.match([1, 2, 3]).length == 0
    match, k, v, state = restored(cache, a[:35] + [9, 9])
    assert (match.length, match.common) == (32, 35)  # the snapshot at 32, not the 35 shared tokens
    assert torch.equal(k[:32, 0], torch.arange(32.0)) and torch.equal(v[:32], -torch.arange(32.0))
    assert (k[32:] == -7).all() and (v[32:] == 7).all()  # nothing past the restored prefix is written
    assert state.tolist() == [32.0] * 3
    assert cache.match(a).length == 40 and cache.match(a, limit=39).length == 32


def test_insert_splits_at_the_divergence_and_keeps_its_snapshot() -> None:
    cache = HybridStateCache(CacheConfig(1 << 20, BLOCK))
    a = list(range(100, 150))
    store(cache, a, 16, 32, 48, 50)
    b = a[:37] + list(range(500, 520))
    match = cache.match(b, len(b) - 1)
    assert (match.length, match.common) == (32, 37)
    # The new prompt snapshots where it leaves the cached path (37), its blocks past the restore
    # point, its end and the token before it.
    assert cache.save_points(b, match) == [37, 48, 56, 57]
    store(cache, b, 37, 48, 56, 57)
    assert cache.stats.splits == 1
    top = cache.tree.root.children[100]
    assert (top.start, top.end, sorted(top.snapshots)) == (0, 37, [16, 32, 37])
    assert sorted(c.tokens[0] for c in top.children.values()) == [a[37], 500]
    # A third prompt through the divergence point restores all of it, whatever the block grid.
    c = a[:37] + [7, 7, 7]
    match, k, _, state = restored(cache, c, len(c) - 1)
    assert match.length == 37 and state.tolist() == [37.0] * 3
    assert torch.equal(k[:37, 1], torch.arange(37.0))
    # and a prompt that extends b restores b's exact end
    assert cache.match(b + [1, 2]).length == len(b)


def test_prompt_end_past_a_block_boundary_is_still_a_hit() -> None:
    cache = HybridStateCache(CacheConfig(1 << 20, BLOCK))
    a = list(range(200, 233))  # 33 tokens: ends one past the block boundary at 32
    store(cache, a, *cache.save_points(a, cache.match(a, 32)))
    assert cache.match(a + [5]).length == 33  # an extension restores the exact end
    assert cache.match(a, limit=32).length == 32  # a repeat restores the token before it
    short = [1, 2, 3]  # shorter than a block
    store(cache, short, *cache.save_points(short, cache.match(short, 2)))
    assert cache.match(short, limit=2).length == 2 and cache.match(short + [4]).length == 3


def test_restore_copies_the_cache_is_never_written() -> None:
    cache = HybridStateCache(CacheConfig(1 << 20, BLOCK))
    a = list(range(300, 340))
    keys, values = kv(40)
    state = {32: (torch.full((3,), 32.0),)}
    cache.insert(a, (keys, values), state)
    keys.fill_(123.0)  # the caller's buffers change after the insert (a slot reused)
    values.fill_(123.0)
    match, k, v, s = restored(cache, a + [1])
    k.add_(1000.0)  # the engine steps its restored state in place
    s.add_(1000.0)
    match2, k2, v2, s2 = restored(cache, a + [2])
    assert match2.length == match.length == 32
    assert torch.equal(k2[:32, 0], torch.arange(32.0)) and torch.equal(v2[:32], -torch.arange(32.0))
    assert s2.tolist() == [32.0] * 3


def test_eviction_by_bytes_least_recent_leaf_first_never_pinned() -> None:
    one = HybridStateCache(CacheConfig(1 << 30, BLOCK))
    store(one, list(range(1000, 1032)), 16, 32)
    size = one.bytes
    cache = HybridStateCache(CacheConfig(int(2.5 * size), BLOCK))
    a, b, c = (list(range(s, s + 32)) for s in (1000, 2000, 3000))
    store(cache, a, 16, 32)
    store(cache, b, 16, 32)
    held = cache.acquire(cache.match(a + [0]), 33)  # a running request uses a's path
    store(cache, c, 16, 32)  # over budget: b is the least recently used unpinned leaf
    assert cache.match(b + [0]).length == 0
    assert cache.match(a + [0]).length == 32 and cache.match(c + [0]).length == 32
    assert cache.bytes <= cache.cfg.capacity_bytes and cache.stats.evicted_nodes == 1
    d = list(range(4000, 4032))
    store(cache, d, 16, 32)  # c goes now; a stays pinned
    assert cache.match(a + [0]).length == 32 and cache.match(c + [0]).length == 0
    cache.release(held)
    store(cache, list(range(5000, 5032)), 16, 32)  # released: a can go too
    assert cache.match(a + [0]).length == 0


def test_counters_reset_and_epoch() -> None:
    cache = HybridStateCache(CacheConfig(1 << 20, BLOCK))
    a = list(range(600, 640))
    store(cache, a, 32, 40)
    cache.acquire(cache.match(a + [1]), 41)
    cache.acquire(cache.match([9, 9, 9]), 3)
    assert (cache.stats.lookups, cache.stats.query_tokens, cache.stats.hit_tokens) == (2, 44, 40)
    assert cache.stats.inserted_tokens == 40 and cache.stats.snapshots_stored == 2
    assert cache.snapshots() == 2 and cache.nodes() == 1
    epoch = cache.epoch
    cache.reset()
    assert cache.epoch == epoch + 1 and cache.bytes == 0 and cache.match(a + [1]).length == 0


def test_snapshot_restore_checks_its_arity() -> None:
    snap = Snapshot((torch.zeros(2), torch.ones(2)))
    out = (torch.empty(2), torch.empty(2))
    snap.copy_into(out)
    assert out[1].tolist() == [1.0, 1.0] and snap.nbytes == 16
    try:
        snap.copy_into(out[:1])
    except ValueError:
        pass
    else:
        raise AssertionError("a snapshot restored into the wrong number of tensors must fail")
