"""Reset a stack's prefix cache, and believe the reset only where the next request shows no hits.

An HTTP 200 from `POST /reset_prefix_cache` is a claim: a stack can answer it and keep its cache,
and every repeated cell would then run warm. Where the stack's /metrics counts prefix-cache hits,
the claim is checked with a probe (a small non-streaming request):

1. the probe twice: the second one must hit the cache, or the probe cannot show anything (too
   short to fill a cache block, or no cache at all) and the reset is taken on trust;
2. the reset;
3. the probe again: any hit now means the cache survived the claimed reset;
4. the reset once more, since the check itself left the probe cached.

The counter deltas assume nothing else is sent to the stack meanwhile (the bench resets between
cells). A stack's fault never raises: the outcome says what happened.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from harness import counters
from harness.client import REQUEST_ERRORS, HTTPStatusError, failure, post_json, session

ROUTE = "/reset_prefix_cache"
# Prefix-cache hits in tokens: our contract's JSON name, then vLLM's Prometheus counter.
HIT_COUNTERS = ("prefix_cache_hit_tokens", "vllm:prefix_cache_hits_total")
# Request fields that would make a one-token probe longer or streamed (llama.cpp's min_tokens
# stands in for ignore_eos), dropped from a payload made into a probe.
_NOT_IN_PROBE = ("stream", "stream_options", "min_tokens", "ignore_eos", "max_completion_tokens")


@dataclass(frozen=True)
class ResetOutcome:
    status: str  # for the row, e.g. "done (verified: ...)", "unsupported (HTTP 404)", "claimed, not done: ..."
    ok: bool  # False only when the stack claimed the reset and the probe showed the cache kept
    hits_after: float | None = None  # cached tokens the probe hit after the reset, where measured


@dataclass(frozen=True)
class _Claim:
    done: bool  # the stack answered that the reset happened
    status: str  # what to report when it did not


def probe_from(payload: dict) -> dict:
    """A cell's payload made a probe: one token, not streamed; its prompt is what gets cached, so
    it must be longer than the stack's cache block (vLLM's CPU build: 128 tokens) to show anything."""
    return {k: v for k, v in payload.items() if k not in _NOT_IN_PROBE} | {"max_tokens": 1}


def _claim(base_url: str, timeout_s: float) -> _Claim:
    try:
        response = httpx.post(base_url + ROUTE, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return _Claim(False, f"failed: {type(exc).__name__}")
    if response.status_code != 200:
        return _Claim(False, f"unsupported (HTTP {response.status_code})")
    try:
        body = response.json()
    except ValueError:
        body = None
    # vLLM answers 200 with {"success": false} when it could not reset (blocks still held).
    for key in ("success", "reset"):
        if isinstance(body, dict) and body.get(key) is False:
            return _Claim(False, f"not done: the stack answered {key}=false")
    return _Claim(True, "done")


def _hits(base_url: str, name: str, timeout_s: float) -> float | None:
    reading = counters.read(base_url, timeout_s)
    return None if reading is None else reading.get(name)


def _probe(base_url: str, endpoint: str, probe: dict, timeout_s: float) -> str | None:
    """Send the probe; what went wrong, or None."""
    async def send() -> None:
        async with session(timeout_s) as client:
            await post_json(client, base_url, endpoint, probe)
    try:
        asyncio.run(send())
    except HTTPStatusError as exc:
        return str(exc)
    except REQUEST_ERRORS as exc:
        return failure(exc)
    return None


def _probe_hits(base_url: str, endpoint: str, probe: dict, name: str, timeout_s: float) -> tuple[float | None, str]:
    """How much the hit counter grew over one probe; (None, why) where that cannot be read."""
    before = _hits(base_url, name, timeout_s)
    failed = _probe(base_url, endpoint, probe, timeout_s)
    if failed:
        return None, f"the probe failed: {failed}"
    after = _hits(base_url, name, timeout_s)
    if before is None or after is None:
        return None, f"/metrics {name} could not be read around the probe"
    return after - before, ""


def _unverified(base_url: str, timeout_s: float, why: str) -> ResetOutcome:
    claim = _claim(base_url, timeout_s)
    return ResetOutcome(f"done (unverified: {why})" if claim.done else claim.status, ok=True)


def reset_prefix_cache(base_url: str, probe: dict | None, endpoint: str, timeout_s: float = 30.0) -> ResetOutcome:
    """Reset the stack's prefix cache and check it with `probe` (a request body for `endpoint`,
    "completions" or "chat"; see `probe_from`) where /metrics counts prefix-cache hits."""
    reading = counters.read(base_url, timeout_s)
    name = next((n for n in HIT_COUNTERS if reading and n in reading), None)
    if name is None:
        return _unverified(base_url, timeout_s, "no prefix-cache hit counter on /metrics")
    if probe is None:
        return _unverified(base_url, timeout_s, "no probe request")
    # The first probe fills the cache, the second must hit it: a control that the check can see.
    _probe(base_url, endpoint, probe, timeout_s)
    hits_before, why = _probe_hits(base_url, endpoint, probe, name, timeout_s)
    if hits_before is None:
        return _unverified(base_url, timeout_s, why)
    if hits_before <= 0:
        return _unverified(base_url, timeout_s, "the probe hit no cached tokens even before the reset")
    claim = _claim(base_url, timeout_s)
    if not claim.done:
        return ResetOutcome(claim.status, ok=True)
    hits_after, why = _probe_hits(base_url, endpoint, probe, name, timeout_s)
    if hits_after is None:
        return ResetOutcome(f"done (unverified: {why})", ok=True)
    if hits_after > 0:
        return ResetOutcome(f"claimed, not done: the probe hit {hits_after:g} cached tokens after the reset "
                            f"({hits_before:g} before it)", ok=False, hits_after=hits_after)
    closing = _claim(base_url, timeout_s)  # the check left the probe cached
    tail = "" if closing.done else f"; the closing reset: {closing.status}"
    return ResetOutcome(f"done (verified: the probe hit 0 cached tokens after the reset, {hits_before:g} "
                        f"before it){tail}", ok=True, hits_after=0.0)
