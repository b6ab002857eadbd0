"""Setting F: text-to-image. The accuracy pass (one image at a time, each prompt and seed judged
against the plain loop's image), then one cell per load point, every measured image judged the
same way (scenarios/workloads/text_to_image.py, and the YAML's header)."""
from __future__ import annotations

import pytest

from harness.bench import progress_bar
from scenarios.workloads.text_to_image import (Bounds, ImageCheck, accuracy_tasks, image_size,
                                               judge_images, measured_tasks, reference_image, reuse_guard,
                                               warmup_tasks)

pytestmark = pytest.mark.setting("F")


def hold_references(profile: dict, model_dir, salt: str | None, log) -> None:
    """Every image the oracle will ask for, drawn before the stack starts (conftest)."""
    wanted = accuracy_tasks(profile, salt) + measured_tasks(profile, salt)
    with progress_bar("reference images", len(wanted)) as tick:
        for task in wanted:
            reference_image(model_dir, task)
            tick()
    log(f"reference images: {len(wanted)} held")


def test_accuracy(live_bench, profile, salt):
    sent = accuracy_tasks(profile, salt)
    size = image_size(live_bench.model_dir)
    records = live_bench.collect("images", [t.payload(size) for t in sent], profile["request_timeout_s"])
    failed = [f"{t.id}: {r.error}" for t, r in zip(sent, records) if not r.ok]
    verdict = judge_images(live_bench.model_dir, sent, [r.blob if r.ok else None for r in records],
                           Bounds.of(profile))
    live_bench.judged_accuracy(verdict, [r.final for r in records])
    failures = "\n".join(f"  {p.prompt_id}: {p.reason}" for p in verdict.prompts if not p.ok)
    assert not failed, "; ".join(failed)
    assert verdict.ok, f"{verdict.summary}\n{failures}"


def test_performance(cell_bench, profile, load_point, repeat, salt):
    n = profile["load"]["num_prompts"]
    size = image_size(cell_bench.model_dir)
    measured = measured_tasks(profile, salt)
    sent = warmup_tasks(profile, load_point.warmup, salt) + measured
    row = cell_bench.measure(profile["load"]["endpoint"], [t.payload(size) for t in sent], load_point,
                             profile["request_timeout_s"], repeat=repeat,
                             guard=reuse_guard(cell_bench.model_dir, profile["steps"]),
                             check=ImageCheck(measured, Bounds.of(profile)))
    assert row.metrics["completed"] == n, f"{row.metrics['failed']} of {n} requests failed: {row.error}"
    assert row.status == "ok", row.error
