"""Every serving metric, one formula each, over records of any unit (tokens, audio seconds, images).

Text keys are named as `vllm bench serve` names them; another unit's totals take its name.

- ttft: send -> first event carrying at least one unit of output (role-only chunks never count).
- e2el: send -> last event (the trailing usage-only chunk is no event; a closing transcript is).
- tpot: (e2el - ttft) / (n_out - 1), n_out from the server's usage when it sent one; for another
  unit than tokens the same formula is `time_per_unit`.
- itl: gaps between consecutive unit-carrying events, one per event (vLLM's meaning: a chunk
  carrying k tokens is one gap).
- token_gap (`unit_gap` for another unit): the same gaps spread evenly over the units each event
  carried, one per unit (the per-token spread; equal to itl when every chunk carries one token).
- throughputs: totals over the measured window (first send -> last event of any request).
- goodput: requests meeting every given SLO (ttft, tpot, e2el in ms) per second of the window.
- every count the server reported in usage (e.g. OpenAI's accepted_prediction_tokens), summed over
  the completed requests under its own name (absent when no request reported it).

A scenario adds metrics of its own by name in its YAML (`metrics: {name: module:function}`, as
lm-eval's metric_list): each function takes the measured records, and the /metrics counters that
moved over them (None where unreadable) if it names a second parameter, and returns a number (kept
under its name) or a dict of them.
"""
from __future__ import annotations

import importlib
import inspect
import re
from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np

from harness.errors import HarnessError
from harness.lengths import length_metrics
from harness.records import RequestRecord

PERCENTILES = (50, 90, 99)
MetricFunction = Callable[..., "float | dict | None"]  # (records) or (records, counters)


_LABELS = {
    "output_throughput": "output tok/s",
    "total_token_throughput": "total tok/s",
    "request_throughput": "req/s",
    "request_goodput": "goodput (req/s)",
    "completed": "completed",
    "total_input_tokens": "input tokens",
    "total_output_tokens": "output tokens",
    "duration": "duration (s)",
}
_STATS = {"mean": "mean", "median": "p50", "std": "std"}
_LATENCIES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "token_gap": "token gap", "e2el": "E2E latency",
              "time_per_unit": "time per unit", "unit_gap": "unit gap"}
_LATENCY_KEY = re.compile(r"^(mean|median|std|p\d+(?:\.\d+)?)_([a-z0-9_]+?)_ms$")


def metric_label(key: str, labels: dict[str, str] | None = None) -> str:
    """A column heading for a metric key: the scenario's own label (its YAML's leaderboard.labels),
    else "output_throughput" -> "output tok/s", "p99_ttft_ms" -> "TTFT p99 (ms)", else the key
    with spaces."""
    if labels and key in labels:
        return labels[key]
    if key in _LABELS:
        return _LABELS[key]
    m = _LATENCY_KEY.match(key)
    if m:
        stat, what = m.groups()
        return f"{_LATENCIES.get(what, what.upper())} {_STATS.get(stat, stat)} (ms)"
    return key.replace("_", " ")


def names(unit: str) -> dict[str, str]:
    """The keys of the unit-dependent metrics: vLLM's for tokens, the unit's own name otherwise."""
    if unit == "tokens":
        return {"per_unit": "tpot", "gap": "token_gap", "total": "total_output_tokens"}
    return {"per_unit": "time_per_unit", "gap": "unit_gap", "total": f"total_output_{unit}"}


def tpot(rec: RequestRecord) -> float | None:
    n = rec.output_units
    if not rec.ok or n < 2:
        return None
    return (rec.e2el - rec.ttft) / (n - 1)


def itls(rec: RequestRecord) -> list[float]:
    times = [e.t for e in rec.unit_events]
    return [times[i] - times[i - 1] for i in range(1, len(times))]


def unit_gaps(rec: RequestRecord) -> list[float]:
    events = rec.unit_events
    out: list[float] = []
    for prev, event in zip(events, events[1:]):
        n = max(int(round(event.units)), 1)
        out.extend([(event.t - prev.t) / n] * n)
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


def usage_counts(records: list[RequestRecord]) -> dict[str, int]:
    """Each usage count summed over the completed requests that reported it."""
    sums: dict[str, int] = {}
    for r in records:
        if r.ok:
            for key, value in r.usage.items():
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


def _one_or_counts(values: Iterable[str]) -> str | dict | None:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if len(counts) == 1 else dict(counts) or None


def summarize(records: list[RequestRecord], slos_ms: dict[str, float] | None = None,
              extra: dict[str, MetricFunction] | None = None, counters: dict | None = None) -> dict:
    """The flat metrics dict of one load point (measured requests only); `extra`: a scenario's own."""
    done = [r for r in records if r.ok]
    unit = _one_or_counts(r.unit for r in records) or "tokens"
    key = names(unit if isinstance(unit, str) else "units")
    duration = window_s(records)
    out_units = sum(r.output_units for r in done)
    in_tokens = sum(r.input_units or 0 for r in done)
    per_second = (lambda x: x / duration) if duration > 0 else (lambda x: None)
    metrics = {
        "unit": unit,
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration": duration,
        "total_input_tokens": in_tokens,
        key["total"]: out_units,
        "request_throughput": per_second(len(done)),
        "output_throughput": per_second(out_units),
        "total_token_throughput": per_second(in_tokens + out_units) if unit == "tokens" else None,
        "token_count_source": _one_or_counts(r.unit_count_source for r in done),
        **stats("ttft", (r.ttft for r in done)),
        **stats(key["per_unit"], (tpot(r) for r in done)),
        **stats("itl", (gap for r in done for gap in itls(r))),
        **stats(key["gap"], (gap for r in done for gap in unit_gaps(r))),
        **stats("e2el", (r.e2el for r in done)),
        **usage_counts(records),
        **(length_metrics(done) if unit == "tokens" else {}),
    }
    if slos_ms:
        metrics["request_goodput"] = per_second(sum(good(r, slos_ms) for r in done))
    for name, fn in (extra or {}).items():
        value = fn(records, counters) if _takes_counters(fn) else fn(records)
        metrics.update(value if isinstance(value, dict) else {name: value})
    errors = Counter(r.error for r in records if r.error)
    if errors:
        metrics["errors"] = dict(errors.most_common(5))
    return metrics


def _takes_counters(fn: Callable) -> bool:
    try:
        return len(inspect.signature(fn).parameters) >= 2
    except (TypeError, ValueError):
        return False


def resolve(references: dict[str, str]) -> dict[str, MetricFunction]:
    """A scenario's `metrics: {name: "package.module:function"}` as functions; a bad one is one line."""
    out = {}
    for name, ref in references.items():
        module, _, attr = str(ref).partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise HarnessError(f"metric {name!r}: cannot load {ref!r} ({type(exc).__name__}: {exc})") from None
        if not callable(fn):
            raise HarnessError(f"metric {name!r}: {ref!r} is not a function")
        out[name] = fn
    return out
