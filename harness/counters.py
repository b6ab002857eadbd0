"""A stack's `GET /metrics` counters, read before and after a cell, and what changed in between.

The stack contract asks for JSON counters (`{"forward_passes": 12, "spec_accepted_tokens": 40}`);
real engines (vLLM, SGLang) answer Prometheus text instead. Both are read into one flat
{name: number} mapping: for Prometheus, the samples of each counter (names ending in `_total`)
summed over their label sets, so `vllm:spec_decode_num_accepted_tokens_total` is one number.
Gauges and histograms are left out: a delta of them means nothing.
"""
from __future__ import annotations

import json
import math
import re

import httpx

Counters = dict[str, float]
# name{labels} value [timestamp]; label values may hold spaces, so the labels are skipped whole
_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)')


def parse(body: str) -> Counters | None:
    """Counters from a /metrics body (JSON or Prometheus text); None when it is neither."""
    text = body.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return {str(k): float(v) for k, v in data.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)} if isinstance(data, dict) else None
    out: Counters = {}
    samples = 0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        samples += bool(m)
        if not m or not m.group(1).endswith("_total"):
            continue
        try:
            value = float(m.group(2))
        except ValueError:
            continue
        if math.isfinite(value):
            out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out if samples else None


def read(base_url: str, timeout_s: float = 10.0) -> Counters | None:
    """The stack's counters now; None when it has no readable /metrics."""
    try:
        response = httpx.get(base_url + "/metrics", timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return parse(response.text)


def first(reading: Counters | None, names: tuple[str, ...]) -> float | None:
    """The value of the first of `names` (one counter as engines spell it) that `reading` has."""
    return next((reading[n] for n in names if reading and n in reading), None)


def delta(before: Counters | None, after: Counters | None) -> Counters | None:
    """after - before for every counter both readings have; None when either reading failed."""
    if before is None or after is None:
        return None
    return {k: after[k] - before[k] for k in sorted(after) if k in before}
