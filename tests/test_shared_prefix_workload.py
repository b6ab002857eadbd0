"""Setting C's workload and oracle pieces on hand-made inputs: prompts fresh per run and shaped as
the YAML says, the hit rate from usage or counters, the engagement guard's coverage, the strict
replay comparison and the hits-used timing rule, each shown to FAIL what it must."""
from __future__ import annotations

import pytest

from harness.generation import Generation
from harness.records import Event, RequestRecord
from scenarios.workloads.shared_prefix import (Timing, _strict, _used, branching, cell, hit_guard,
                                               prefix_hit_rate)

LOAD = {"prefix_len": 300, "warmup": 1, "warmup_tail": 20, "warmup_output_len": 8, "output_len": 16}
POOL = list(range(100, 5000))


def test_a_cell_shares_one_fresh_prefix_and_gives_each_request_its_own_tail():
    work = cell(LOAD, tail=129, n=4, seed=7, salt="aa", pool=POOL)
    assert work.prefix_len == 300 and len(work.warmup) == 1 and len(work.measured) == 4
    prefixes = {r.ids[:300] for r in work.warmup + work.measured}
    assert len(prefixes) == 1
    assert all(len(r.ids) == 300 + 129 and r.max_tokens == 16 for r in work.measured)
    assert len(work.warmup[0].ids) == 320 and work.warmup[0].max_tokens == 8
    assert len({r.ids[300:] for r in work.measured}) == 4
    body = work.payloads()[1]
    assert body["prompt"] == list(work.measured[0].ids) and body["ignore_eos"] is True and body["temperature"] == 0
    # another run (salt) or another point draws other prompts; the same ones give the same
    assert cell(LOAD, 129, 4, 7, "aa", POOL) == work
    assert cell(LOAD, 129, 4, 7, "bb", POOL).measured[0].ids[:300] != work.measured[0].ids[:300]
    assert cell(LOAD, 128, 4, 7, "aa", POOL).measured[0].ids[:300] != work.measured[0].ids[:300]


def test_the_radix_cases_share_diverge_extend_and_return():
    reqs = {r.id: r.ids for r in branching({"shared_len": 200, "tail_len": 10, "max_tokens": 4, "seed": 1}, "s", POOL)}
    assert reqs["a"][:200] == reqs["b"][:200] == reqs["c"][:200] and reqs["a"][200] != reqs["b"][200]
    assert reqs["a+more"][: len(reqs["a"])] == reqs["a"] and len(reqs["a+more"]) > len(reqs["a"])
    cut = 200 - 200 // 3 - 5
    assert reqs["part-of-shared"][:cut] == reqs["a"][:cut] and cut % 16 != 0
    assert reqs["b-again"] == reqs["b"]


def record(prompt: int, cached: int | None = None, text: str = "xyz", units: int = 3) -> RequestRecord:
    r = RequestRecord(index=0, sent_at=0.0, events=[Event(0.1, units, text)], final=text, input_units=prompt,
                      reported_units=units, finish_reason="length")
    if cached is not None:
        r.usage["cached_tokens"] = cached
    return r


def test_hit_rate_from_usage_else_from_counters():
    assert prefix_hit_rate([record(400, 300), record(400, 100)], None) == pytest.approx(0.5)
    assert prefix_hit_rate([record(400), record(400)], {"vllm:prefix_cache_hits_total": 300,
                                                        "vllm:prefix_cache_queries_total": 800}) == pytest.approx(0.375)
    assert prefix_hit_rate([record(400)], None) is None


def test_the_guard_fails_hits_that_cover_too_little_of_the_shared_prefix():
    guard = hit_guard(shared=1000, share=0.9)
    assert guard.check(4 * 950, None, {"completed": 4}).ok
    short = guard.check(4 * 500, None, {"completed": 4})
    assert not short.ok and "cover 50% of the shared prefix" in short.reason
    assert not guard.check(None, {"prefix_cache_hit_tokens": 0.0}, {"completed": 4}).ok  # no hits at all
    assert guard.check(None, {"prefix_cache_hit_tokens": 3900.0}, {"completed": 4}).ok  # counters when no usage


def test_the_replay_comparison_is_strict_and_says_where_it_differs():
    alone = Generation(tokens=[" a", " b", " c"], top=[{" a": -0.1}, {" b": -0.2, " x": -0.3}, {" c": -0.1}],
                       text=" a b c", usage_tokens=3)
    assert _strict("r", record(10, text=" a b c"), alone).ok
    wrong = _strict("r", record(10, text=" a x c"), alone)
    assert not wrong.ok and "character 3" in wrong.reason and "' x'" in wrong.reason
    assert not _strict("r", record(10, text=" a b c", units=4), alone).ok  # same text, other token count


def test_hits_claimed_must_save_time():
    assert _used(Timing("r", cold_s=1.0, warm_s=0.05, warm_hits=950, prompt_len=1000), 0.9, 0.5).ok
    fake = _used(Timing("r", cold_s=1.0, warm_s=0.9, warm_hits=950, prompt_len=1000), 0.9, 0.5)
    assert not fake.ok and "not used" in fake.reason
    assert _used(Timing("r", cold_s=1.0, warm_s=1.0, warm_hits=None, prompt_len=1000), 0.9, 0.5).ok  # nothing claimed
