"""Setting Y (test-only): image generation over HTTP JSON, to a double that paints one colour per
(prompt, seed).

Each image is judged by strict equality of what it must be: its size, and the colour the double's
contract draws from sha256(prompt, seed) (so an image that ignores the seed fails). Prompts carry
the run's salt.
"""
from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from harness.bench import EqualityCheck
from harness.oracle import judge_equal
from harness.prompts import salted

pytestmark = pytest.mark.setting("Y")


def payloads(profile: dict, n: int, seed: int, salt: str) -> list[dict]:
    return [{"prompt": salted(f"a lighthouse at dusk, study {i % profile['prompts']}", salt), "seed": seed + i,
             "width": profile["size"], "height": profile["size"], "num_inference_steps": 2, "guidance_scale": 5.0}
            for i in range(n)]


def expected(payload: dict) -> tuple:
    colour = tuple(hashlib.sha256(f"{payload['prompt']}\0{payload['seed']}".encode()).digest()[:3])
    return payload["width"], payload["height"], colour


def seen(record) -> tuple | None:
    """The image's size and its one colour (None where it has more than one)."""
    if record.blob is None:
        return None
    image = Image.open(io.BytesIO(record.blob)).convert("RGB")
    colours = image.getcolors(maxcolors=1)
    return image.width, image.height, colours[0][1] if colours else None


def test_accuracy(live_bench, profile, salt):
    sent = payloads(profile, profile["prompts"] * 2, profile["load"]["seed"] + 7919, salt)  # each prompt, two seeds
    records = live_bench.collect("images", sent, profile["request_timeout_s"])
    verdict = judge_equal([f"image-{i}" for i in range(len(sent))], [expected(p) for p in sent],
                          [seen(r) if r.ok else None for r in records])
    live_bench.judged_accuracy(verdict, [r.final for r in records])
    assert verdict.ok, verdict.summary


def test_performance(cell_bench, profile, load_point, repeat, salt):
    n = profile["load"]["num_prompts"]
    sent = payloads(profile, load_point.warmup + n, load_point.seed, salt)
    check = EqualityCheck([f"image-{i}" for i in range(n)], [expected(p) for p in sent[load_point.warmup:]], seen)
    row = cell_bench.measure(profile["load"]["endpoint"], sent, load_point, profile["request_timeout_s"],
                             repeat=repeat, check=check)
    assert row.metrics["completed"] == n, f"{row.metrics['failed']} of {n} requests failed: {row.error}"
    assert row.status == "ok", row.error
