"""Every serving metric, one formula each, named as `vllm bench serve` names them.

- ttft: send -> first chunk carrying at least one generated token (role-only chunks never count).
- e2el: send -> last token chunk (the trailing usage-only chunk does not move it).
- tpot: (e2el - ttft) / (n_out - 1), n_out from the server's usage when it sent one.
- itl: gaps between consecutive token chunks, one per chunk (vLLM's meaning: a chunk carrying k
  tokens is one gap).
- token_gap: the same gaps spread evenly over the tokens each chunk carried, one per token (the
  per-token spread; equal to itl when every chunk carries one token).
- throughputs: totals over the measured window (first send -> last token of any request).
- goodput: requests meeting every given SLO (ttft, tpot, e2el in ms) per second of the window.
- median_tok_per_s: median(output tokens per request) / median(e2el), the study's concurrency-1
  figure for predicted outputs (setting B); not the median of per-request rates.
- every count the server reported in usage.completion_tokens_details (e.g. OpenAI's
  accepted_prediction_tokens), summed over the completed requests under its own name (absent when
  no request reported it).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from harness.records import RequestRecord

PERCENTILES = (50, 90, 99)


def tpot(rec: RequestRecord) -> float | None:
    n = rec.output_tokens
    if not rec.ok or n < 2:
        return None
    return (rec.e2el - rec.ttft) / (n - 1)


def itls(rec: RequestRecord) -> list[float]:
    return [rec.chunk_times[i] - rec.chunk_times[i - 1] for i in range(1, len(rec.chunk_times))]


def token_gaps(rec: RequestRecord) -> list[float]:
    out: list[float] = []
    for i in range(1, len(rec.chunk_times)):
        gap = rec.chunk_times[i] - rec.chunk_times[i - 1]
        n = max(rec.chunk_tokens[i], 1)
        out.extend([gap / n] * n)
    return out


def stats(name: str, values_s: Iterable[float]) -> dict[str, float]:
    """mean/median/std/pNN of a list of seconds, in milliseconds; empty lists give None, never 0."""
    arr = np.asarray([v for v in values_s if v is not None], dtype=float) * 1000.0
    if arr.size == 0:
        keys = [f"mean_{name}_ms", f"median_{name}_ms", f"std_{name}_ms", *(f"p{p}_{name}_ms" for p in PERCENTILES)]
        return dict.fromkeys(keys)
    return {
        f"mean_{name}_ms": float(arr.mean()),
        f"median_{name}_ms": float(np.median(arr)),
        f"std_{name}_ms": float(arr.std()),
        **{f"p{p}_{name}_ms": float(np.percentile(arr, p)) for p in PERCENTILES},
    }


def median_tok_per_s(records: list[RequestRecord]) -> float | None:
    done = [r for r in records if r.ok]
    if not done:
        return None
    latency = float(np.median([r.e2el for r in done]))
    return float(np.median([r.output_tokens for r in done])) / latency if latency > 0 else None


def usage_details(records: list[RequestRecord]) -> dict[str, int]:
    """Each usage detail count summed over the completed requests that reported it."""
    sums: dict[str, int] = {}
    for r in records:
        if r.ok:
            for key, value in r.usage_details.items():
                sums[key] = sums.get(key, 0) + value
    return dict(sorted(sums.items()))


def window_s(records: list[RequestRecord]) -> float:
    sent = [r.sent_at for r in records if r.sent_at is not None]
    ends = [r.sent_at + r.e2el for r in records if r.ok and r.sent_at is not None]
    if not sent or not ends:
        return 0.0
    return max(ends) - min(sent)


def good(rec: RequestRecord, slos_ms: dict[str, float]) -> bool:
    measured = {"ttft": rec.ttft, "tpot": tpot(rec) or 0.0, "e2el": rec.e2el}
    return rec.ok and all(measured[k] * 1000.0 <= limit for k, limit in slos_ms.items())


def summarize(records: list[RequestRecord], slos_ms: dict[str, float] | None = None) -> dict:
    """The flat metrics dict of one load point (measured requests only)."""
    done = [r for r in records if r.ok]
    duration = window_s(records)
    out_tokens = sum(r.output_tokens for r in done)
    in_tokens = sum(r.prompt_tokens or 0 for r in done)
    per_second = (lambda x: x / duration) if duration > 0 else (lambda x: None)
    sources = Counter(r.token_count_source for r in done)
    metrics = {
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": per_second(len(done)),
        "output_throughput": per_second(out_tokens),
        "total_token_throughput": per_second(in_tokens + out_tokens),
        "token_count_source": sources.most_common(1)[0][0] if len(sources) == 1 else dict(sources) or None,
        **stats("ttft", (r.ttft for r in done)),
        **stats("tpot", (tpot(r) for r in done)),
        **stats("itl", (gap for r in done for gap in itls(r))),
        **stats("token_gap", (gap for r in done for gap in token_gaps(r))),
        **stats("e2el", (r.e2el for r in done)),
        "median_tok_per_s": median_tok_per_s(records),
        **usage_details(records),
    }
    if slos_ms:
        metrics["request_goodput"] = per_second(sum(good(r, slos_ms) for r in done))
    errors = Counter(r.error for r in records if r.error)
    if errors:
        metrics["errors"] = dict(errors.most_common(5))
    return metrics
