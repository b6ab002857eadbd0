"""Setting C's workload and oracle: one long shared prefix of token ids, a unique tail per request.

The prompts are fresh random ids each run (drawn from the run's salt, the point's seed and its
tail length), from the ids that decode to whole text on their own, so any prompt a stack saw
before is useless to it. Each load point is one tail length; the YAML sweeps them so that the
prompt's end falls on, just before and just past the block sizes engines cache on.

The oracle of a cell judges the measured requests themselves (`CachedRunCheck`):
- reference: each output against transformers on the whole prompt, without any cache (near-tie rule);
- lossless (stacks that declare `prefix_caching`): each measured request sent again alone after
  `POST /reset_prefix_cache` gives the same text and token count (strict);
- hits used (same stacks): for a few drawn requests, the prompt's first token after a reset (cold)
  and again right after (warm): where the warm one reports hits on most of the prompt, it must come
  at most `max_warm_share` of the cold one's time, or the hits were reported without being used.
The engagement guard (`hit_guard`) asks the cell's hits to cover `min_hit_share` of the shared
prefix of every measured request.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from harness import counters
from harness.assets import text_token_ids
from harness.bench import OutputCheck, OutputsVerdict
from harness.client import REQUEST_ERRORS, post_json, session
from harness.engagement import Guard
from harness.generation import Prompt
from harness.oracle import PromptVerdict, Verdict
from harness.prefix_cache import HIT_COUNTERS, reset_prefix_cache
from harness.records import RequestRecord

FEATURE = "prefix_caching"
# Prompt tokens a stack answered from its cache: the per-request usage (OpenAI's
# prompt_tokens_details.cached_tokens), else /metrics counters (ours, vLLM's hits and queries).
CACHED = "cached_tokens"
QUERY_COUNTERS = ("prefix_cache_query_tokens", "vllm:prefix_cache_queries_total")


@dataclass(frozen=True)
class Request:
    id: str
    ids: tuple[int, ...]
    max_tokens: int

    def payload(self) -> dict:
        return {"model": "default", "prompt": list(self.ids), "max_tokens": self.max_tokens, "temperature": 0,
                "ignore_eos": True}

    def prompt(self) -> Prompt:
        return Prompt(id=self.id, text=f"<{len(self.ids)} token ids>", chat=False, max_tokens=self.max_tokens,
                      ignore_eos=True, ids=self.ids)


@dataclass(frozen=True)
class Cell:
    """One load point's requests: the warm-up (same prefix, another tail) then the measured ones."""

    prefix_len: int
    warmup: list[Request]
    measured: list[Request]

    def payloads(self) -> list[dict]:
        return [r.payload() for r in self.warmup + self.measured]


def token_pool(model_dir) -> list[int]:
    from transformers import AutoTokenizer

    return text_token_ids(AutoTokenizer.from_pretrained(model_dir))


def _rng(salt: str | None, *parts) -> random.Random:
    return random.Random(":".join(str(p) for p in (salt or "unsalted", *parts)))


def cell(load: dict, tail: int, n: int, seed: int, salt: str | None, pool: list[int]) -> Cell:
    """A fresh prefix for this point (no cell is helped by another's cache), n unique tails of
    `tail` ids, one warm-up tail of the YAML's `warmup_tail` ids."""
    rng = _rng(salt, "C", seed, tail)
    draw = lambda k: tuple(rng.choices(pool, k=k))
    prefix = draw(load["prefix_len"])
    warm = [Request(f"tail{tail}-warmup{i}", prefix + draw(load["warmup_tail"]), load["warmup_output_len"])
            for i in range(load["warmup"])]
    measured = [Request(f"tail{tail}-{i}", prefix + draw(tail), load["output_len"]) for i in range(n)]
    return Cell(len(prefix), warm, measured)


def branching(acc: dict, salt: str | None, pool: list[int]) -> list[Request]:
    """The radix cases, sent one at a time in this order: two prompts share a prefix and diverge,
    a third leaves it at the same place (a state restored twice: one the second request advanced in
    place shows here); a fourth extends the first (prompt and more); a fifth leaves the shared
    prefix part-way through a block; the second comes back."""
    rng = _rng(salt, "C-branching", acc["seed"])
    draw = lambda k: tuple(rng.choices(pool, k=k))
    shared, n, tail = draw(acc["shared_len"]), acc["max_tokens"], acc["tail_len"]
    a, b, c = shared + draw(tail), shared + draw(tail + 1), shared + draw(tail + 2)
    cut = acc["shared_len"] - acc["shared_len"] // 3 - 5  # off every block grid a cache would use
    return [Request("a", a, n), Request("b", b, n), Request("c", c, n), Request("a+more", a + draw(tail - 1), n),
            Request("part-of-shared", shared[:cut] + draw(tail), n), Request("b-again", b, n)]


def prefix_hit_rate(records: list[RequestRecord], moved: dict | None) -> float | None:
    """Prompt tokens answered from the cache over prompt tokens of the measured requests: from the
    per-request usage where the stack reports it, else from /metrics hit and query counters."""
    done = [r for r in records if r.ok]
    prompt = sum(r.input_units or 0 for r in done)
    reported = [r.usage[CACHED] for r in done if CACHED in r.usage]
    if reported and prompt:
        return sum(reported) / prompt
    hits, queries = counters.first(moved, HIT_COUNTERS), counters.first(moved, QUERY_COUNTERS)
    return hits / queries if hits is not None and queries else None


def hit_guard(shared: int, share: float) -> Guard:
    """Engagement: some hits, and enough of them to cover `share` of every measured request's
    shared prefix (a speed-up with no hits, or hits on a fraction of the prefix, is void)."""
    def covers(metrics: dict, moved, usage_total) -> str | None:
        hits = usage_total if usage_total is not None else counters.first(moved, HIT_COUNTERS)
        need = share * shared * metrics.get("completed", 0)
        if hits is not None and hits < need:
            return (f"prefix hits cover {hits / max(shared * metrics.get('completed', 1), 1):.0%} of the shared "
                    f"prefix ({hits:g} of {shared} x {metrics.get('completed')} tokens; needed {share:.0%})")
        return None
    return Guard(feature=FEATURE, usage_key=CACHED, counters=HIT_COUNTERS, consistency=(covers,))


@dataclass(frozen=True)
class Timing:
    """One cold/warm pair of first-token times of a prompt, and the hits the warm one reported."""

    request: str
    cold_s: float
    warm_s: float
    warm_hits: float | None
    prompt_len: int


@dataclass(frozen=True)
class CachedRunCheck:
    """A cell's oracle, on its measured requests (see the module docstring)."""

    requests: list[Request]
    timeout_s: float = 600.0  # per replayed request
    timing_probes: int = 2
    min_hit_share: float = 0.9
    max_warm_share: float = 0.5
    top_k: int = 5

    def judge(self, bench, records: list[RequestRecord], cell_label: str) -> OutputsVerdict:
        reference = OutputCheck([r.prompt() for r in self.requests], top_k=self.top_k).judge(bench, records, cell_label)
        prompts = list(reference.verdict.prompts)
        if FEATURE in bench.spec.supports:
            prompts += self._lossless(bench, records)
            prompts += self._hits_used(bench)
        return OutputsVerdict(Verdict(prompts), reference.judged, reference.measured)

    def _reset(self, bench) -> str | None:
        """Empty the stack's cache (the cell's start showed its reset works where it can be shown);
        why it cannot, or None."""
        outcome = reset_prefix_cache(bench.stack.base_url, None, "completions")
        return None if outcome.status.startswith("done") else outcome.status

    def _lossless(self, bench, records: list[RequestRecord]) -> list[PromptVerdict]:
        out = []
        for req, rec in zip(self.requests, records):
            if not rec.ok:
                continue
            failed = self._reset(bench)
            if failed:
                return [PromptVerdict("lossless", False, 0, reason=f"cannot replay on a cold cache: reset {failed}")]
            alone = bench.stack_outputs([req.prompt()], self.timeout_s, self.top_k)[0]
            out.append(_strict(f"{req.id} vs reset", rec, alone))
        return out

    def _hits_used(self, bench) -> list[PromptVerdict]:
        base = bench.stack.base_url
        drawn = self.requests[: self.timing_probes]
        timings = []
        for req in drawn:
            probe = {**req.payload(), "model": bench.served_model, "max_tokens": 1}
            if self._reset(bench):
                return []  # already failed in _lossless
            cold, _ = _timed(base, bench.spec.adapt(probe), self.timeout_s)
            before = counters.read(base)
            warm, usage = _timed(base, bench.spec.adapt(probe), self.timeout_s)
            moved = counters.delta(before, counters.read(base))
            hits = (usage.get("prompt_tokens_details") or {}).get(CACHED)
            if hits is None:
                hits = counters.first(moved, HIT_COUNTERS)
            timings.append(Timing(req.id, cold, warm, hits, len(req.ids)))
        return [_used(t, self.min_hit_share, self.max_warm_share) for t in timings]


def _strict(prompt_id: str, measured: RequestRecord, alone) -> PromptVerdict:
    """The measured streamed text and token count against the same prompt sent alone on a cold cache."""
    count = measured.reported_units if measured.reported_units is not None else measured.output_units
    if measured.text == alone.text and (alone.usage_tokens is None or count == alone.usage_tokens):
        return PromptVerdict(prompt_id, True, len(alone.tokens))
    at = next((i for i, (x, y) in enumerate(zip(measured.text, alone.text)) if x != y),
              min(len(measured.text), len(alone.text)))
    token, seen = 0, 0
    for token, piece in enumerate(alone.tokens):
        seen += len(piece)
        if seen > at:
            break
    top = alone.top[token] if token < len(alone.top) else {}
    return PromptVerdict(prompt_id, False, token, token, reason=
                         f"differs from its cold-cache replay at character {at} (token ~{token}: measured "
                         f"{measured.text[at:at + 12]!r}, replay {alone.text[at:at + 12]!r}; replay's top: "
                         f"{', '.join(f'{k!r} {v:.3f}' for k, v in list(top.items())[:5])}); "
                         f"{count} vs {alone.usage_tokens} tokens")


def _used(t: Timing, min_share: float, max_warm_share: float) -> PromptVerdict:
    pid, seen = f"{t.request} hits used", {"cold_ms": round(t.cold_s * 1e3, 1), "warm_ms": round(t.warm_s * 1e3, 1),
                                           "warm_hits": t.warm_hits, "prompt_tokens": t.prompt_len}
    if t.warm_hits is None or t.warm_hits < min_share * t.prompt_len:
        return PromptVerdict(pid, True, 0, detail=seen)  # claims no hits on it: nothing to check (the guard judges hits)
    if t.warm_s <= max_warm_share * t.cold_s:
        return PromptVerdict(pid, True, 0, detail=seen)
    return PromptVerdict(pid, False, 0, detail=seen, reason=
                         f"reports {t.warm_hits:g} of {t.prompt_len} prompt tokens cached, yet its first token took "
                         f"{t.warm_s * 1e3:.0f} ms against {t.cold_s * 1e3:.0f} ms on a cold cache (more than "
                         f"{max_warm_share:.0%}): the hits were not used")


def _timed(base_url: str, body: dict, timeout_s: float) -> tuple[float, dict]:
    """Seconds to a one-token completion (its prefill), and its usage."""
    async def send() -> dict:
        async with session(timeout_s) as client:
            return await post_json(client, base_url, "completions", body)
    start = time.perf_counter()
    try:
        response = asyncio.run(send())
    except REQUEST_ERRORS:
        return time.perf_counter() - start, {}
    return time.perf_counter() - start, (response or {}).get("usage") or {}
