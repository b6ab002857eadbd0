"""The setting-C test double (tests/stacks/hybrid_double.py) over HTTP, launched from its spec as the
harness launches stacks: its honest mode's outputs with prefix-cache hits are a full recompute's,
and each broken mode shows the fault it is there to show, on a workload made to expose it.

The workload: prompts A and B share a 256-token prefix (four 64-token snapshots) and end in
different 64-token tails; the requests are A (cold, stores the snapshots), B (restores A's
snapshot at 256), then A again (restores the snapshot at 256 a second time).
"""
from __future__ import annotations

import dataclasses
import random
import time

import httpx
import pytest

from harness import counters
from harness.assets import ensure_model
from harness.launcher import launch
from harness.prefix_cache import reset_prefix_cache
from harness.stack import REPO_ROOT, load_spec

pytestmark = pytest.mark.slow  # a real (tiny) model behind each launched double

SPEC = REPO_ROOT / "tests" / "stacks" / "hybrid_double.yaml"
_rng = random.Random(20261202)


def _ids(n: int) -> list[int]:
    return [_rng.randrange(100, 49000) for _ in range(n)]


PREFIX = _ids(256)
A, B = PREFIX + _ids(64), PREFIX + _ids(64)
WORKLOAD = [A, B, A]  # cold, first reuse of the snapshot at 256, second reuse of it
LONG = _ids(768) + _ids(16)  # for timing: a hit restores 768 of 784 tokens
MAX_TOKENS = 12


def spec_for(mode: str, *args: str):
    """The shipped spec with its `--mode honest` replaced, and one torch thread (shared CPUs)."""
    spec = load_spec(SPEC)
    command = tuple(mode if part == "honest" else part for part in spec.command)
    return dataclasses.replace(spec, name=f"hybrid-{mode}", command=command + ("--threads", "1", *args))


@pytest.fixture(scope="module")
def model():
    return ensure_model("olmo-hybrid-tiny")


def complete(url: str, prompt: list[int], max_tokens: int = MAX_TOKENS) -> tuple[list[str], dict, float]:
    """(generated tokens, usage, seconds) of one greedy, non-streamed request."""
    started = time.perf_counter()
    response = httpx.post(url + "/v1/completions", timeout=120, json={
        "model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
        "logprobs": 0})
    seconds = time.perf_counter() - started
    assert response.status_code == 200, response.text
    body = response.json()
    return body["choices"][0]["logprobs"]["tokens"], body["usage"], seconds


def hits(url: str) -> tuple[float, float]:
    reading = counters.read(url)
    return reading["prefix_cache_hit_tokens"], reading["prefix_cache_query_tokens"]


def check_cached_tokens(usage: dict, expected: int) -> None:
    assert (usage.get("prompt_tokens_details") or {}).get("cached_tokens") == expected, usage


def cold(url: str, prompt: list[int], max_tokens: int = MAX_TOKENS) -> tuple[list[str], float]:
    """A request on an emptied prefix cache: a full recompute."""
    assert httpx.post(url + "/reset_prefix_cache", timeout=30).json() == {"reset": True}
    tokens, usage, seconds = complete(url, prompt, max_tokens)
    check_cached_tokens(usage, 0)
    return tokens, seconds


def ttfts(url: str) -> tuple[float, float]:
    """The best of two (cold, warm) one-token latencies (a one-token request's time is its TTFT) on
    LONG: cold after a reset, warm right after it (a hit on 768 of its 784 tokens)."""
    pairs = []
    for _ in range(2):
        _, cold_s = cold(url, LONG, 1)
        _, usage, warm_s = complete(url, LONG, 1)
        check_cached_tokens(usage, 768)
        pairs.append((cold_s, warm_s))
    return min(c for c, _ in pairs), min(w for _, w in pairs)


@pytest.fixture(scope="module")
def honest(model, tmp_path_factory):
    """The honest double's outputs on the workload with its hits, full recomputes of the same
    prompts, its hit counters, its TTFTs and its reset check."""
    tmp = tmp_path_factory.mktemp("hybrid-honest")
    with launch(spec_for("honest"), model, tmp / "logs") as stack:
        url = stack.base_url
        complete(url, PREFIX[:64], 1)  # warm-up (first forwards)
        assert httpx.post(url + "/reset_prefix_cache").status_code == 200
        before = hits(url)
        runs = [complete(url, p) for p in WORKLOAD]
        after = hits(url)
        recomputed = [cold(url, p)[0] for p in (A, B)]
        timing = ttfts(url)
        outcome = reset_prefix_cache(url, {"model": "m", "prompt": A, "max_tokens": 1, "temperature": 0}, "completions")
    return {"outputs": [r[0] for r in runs], "usages": [r[1] for r in runs], "recomputed": recomputed,
            "hit_delta": (after[0] - before[0], after[1] - before[1]), "ttft": timing, "reset": outcome}


def run_workload(mode: str, model, tmp_path) -> tuple[list[list[str]], float]:
    """The mode's outputs on the workload from a cold cache, and the hit tokens it reported."""
    with launch(spec_for(mode), model, tmp_path / "logs") as stack:
        before = hits(stack.base_url)[0]
        outputs = [complete(stack.base_url, p)[0] for p in WORKLOAD]
        return outputs, hits(stack.base_url)[0] - before


def test_honest_outputs_with_hits_equal_a_full_recompute(honest):
    first_a, b, again_a = honest["outputs"]
    assert [first_a, b] == honest["recomputed"]
    assert again_a == first_a
    assert first_a != b  # the tails differ, so do the outputs: the workload can tell prompts apart
    assert honest["hit_delta"] == (512, 3 * 320)  # B and A again each restore the 256-token snapshot
    for usage, cached in zip(honest["usages"], (0, 256, 256)):
        check_cached_tokens(usage, cached)


def test_honest_hits_save_prefill_time_and_its_reset_is_verified(honest):
    cold_s, warm_s = honest["ttft"]
    assert warm_s < 0.4 * cold_s, honest["ttft"]  # measured: ~0.08
    assert honest["reset"].ok and honest["reset"].status.startswith("done (verified"), honest["reset"].status


def test_a_stale_snapshot_gives_wrong_outputs_while_reporting_hits(honest, model, tmp_path):
    (first_a, b, again_a), hit = run_workload("stale", model, tmp_path)
    assert first_a == honest["recomputed"][0]  # cold: nothing to restore
    assert b != honest["recomputed"][1] and again_a != honest["recomputed"][0]
    assert hit == 512


def test_an_in_place_restore_is_right_once_then_wrong(honest, model, tmp_path):
    (first_a, b, again_a), hit = run_workload("inplace", model, tmp_path)
    assert [first_a, b] == honest["recomputed"]  # the snapshot at 256 as stored: its first reuse is right
    assert again_a != honest["recomputed"][0]  # B's request advanced that same snapshot
    assert hit == 512


def test_fake_hits_are_reported_with_a_cold_ttft(honest, model, tmp_path):
    with launch(spec_for("fake-hits"), model, tmp_path / "logs") as stack:
        url = stack.base_url
        complete(url, PREFIX[:64], 1)  # warm-up
        assert httpx.post(url + "/reset_prefix_cache").status_code == 200
        outputs = [complete(url, p) for p in WORKLOAD]
        assert [o[0] for o in outputs] == honest["outputs"]
        for (_, usage, _), cached in zip(outputs, (0, 256, 256)):
            check_cached_tokens(usage, cached)
        cold_s, warm_s = ttfts(url)
        assert hits(url)[0] > 0
    assert warm_s > 0.5 * cold_s, (cold_s, warm_s)  # a "hit" that saves nothing (measured: ~0.8-1)
    assert warm_s > 2 * honest["ttft"][1], (warm_s, honest["ttft"])  # honest hits do save the prefill


def test_a_reset_that_keeps_the_cache_is_caught(model, tmp_path):
    with launch(spec_for("ignores-reset"), model, tmp_path / "logs") as stack:
        outcome = reset_prefix_cache(stack.base_url, {"model": "m", "prompt": A, "max_tokens": 1, "temperature": 0},
                                     "completions")
    assert not outcome.ok and outcome.hits_after == 256, outcome.status


def test_the_spec_is_a_launchable_prefix_caching_stack_with_an_off_switch():
    spec = load_spec(SPEC)
    assert "prefix_caching" in spec.supports and spec.command[-2:] == ("--mode", "honest")  # last: others swap it
    assert spec.with_off("prefix_caching").command[-1] == "--no-prefix-cache"
