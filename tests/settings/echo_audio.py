"""Setting X (test-only): audio streamed to an echo double over the WebSocket transport.

The accuracy test streams `clips` clips one at a time and judges each final transcript by strict
equality with what an echo of that audio must answer (16 hex digits of the sha256 of the PCM
bytes, the double's contract); every performance cell judges every measured transcript the same
way and adds the setting's own metric, the latency of each chunk's partial after the chunk went out.
The clips are seeded random noise, salted per run.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from harness.bench import EqualityCheck
from harness.oracle import judge_equal

pytestmark = pytest.mark.setting("X")
RATE = 16000


def clip(seconds: float, seed: int, salt: str) -> bytes:
    """PCM16 mono noise, different for every seed and run."""
    salt_int = int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, salt_int])
    return rng.normal(0, 3000, int(RATE * seconds)).clip(-32768, 32767).astype("<i2").tobytes()


def echo(audio: bytes) -> str:
    return hashlib.sha256(audio).hexdigest()[:16]


def payloads(profile: dict, n: int, seed: int, salt: str) -> list[dict]:
    return [{"audio": clip(profile["seconds"], seed * 1000 + i, salt), "sample_rate": RATE,
             "chunk_s": profile["chunk_s"], "realtime": profile["realtime"]} for i in range(n)]


def test_accuracy(live_bench, profile, salt):
    sent = payloads(profile, profile["clips"], profile["load"]["seed"] + 7919, salt)
    records = live_bench.collect("audio_stream", sent, profile["request_timeout_s"])
    ids = [f"clip-{i}" for i in range(len(sent))]
    verdict = judge_equal(ids, [echo(p["audio"]) for p in sent], [r.final if r.ok else None for r in records])
    live_bench.judged_accuracy(verdict, [r.final for r in records])
    assert verdict.ok, verdict.summary


def test_performance(cell_bench, profile, load_point, repeat, salt):
    n = profile["load"]["num_prompts"]
    sent = payloads(profile, load_point.warmup + n, load_point.seed, salt)
    check = EqualityCheck([f"clip-{i}" for i in range(n)], [echo(p["audio"]) for p in sent[load_point.warmup:]])
    row = cell_bench.measure(profile["load"]["endpoint"], sent, load_point, profile["request_timeout_s"],
                             repeat=repeat, check=check)
    assert row.metrics["completed"] == n, f"{row.metrics['failed']} of {n} streams failed: {row.error}"
    assert row.status == "ok", row.error
