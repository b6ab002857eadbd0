"""Setting C: prefix caching on a hybrid attention + GatedDeltaNet model. The radix cases against
the reference and the stack with its cache off, then one cell per tail length, judged on its own
requests (scenarios/workloads/shared_prefix.py, and the YAML's header)."""
from __future__ import annotations

from functools import cache

import pytest

from harness.assets import ensure_model
from harness.generation import Prompt
from harness.lengths import length_honoured
from scenarios.workloads.shared_prefix import CachedRunCheck, branching, cell, hit_guard, token_pool

pytestmark = pytest.mark.setting("C")


@cache
def _pool(model: str) -> tuple[int, ...]:
    return tuple(token_pool(ensure_model(model)))


def accuracy_prompts(profile: dict, salt: str | None) -> list[Prompt]:
    return [r.prompt() for r in branching(profile["accuracy"], salt, list(_pool(profile["model"])))]


def reference_prompts(profile: dict, salt: str | None) -> tuple[list[Prompt], int]:
    """What the harness computes before a stack starts (conftest)."""
    return accuracy_prompts(profile, salt), profile["accuracy"]["top_logprobs"]


def test_accuracy(live_bench, profile, salt):
    acc = profile["accuracy"]
    # The hits of these five one-at-a-time requests are each a part of a prompt, so the guard
    # asks for hits, not for a share of anything.
    guard = hit_guard(shared=0, share=0.0)
    verdict = live_bench.lossless_accuracy(accuracy_prompts(profile, salt), profile["request_timeout_s"],
                                           top_k=acc["top_logprobs"], guard=guard)
    failures = "\n".join(f"  {line}" for line in verdict.failures())
    assert verdict.ok, f"{verdict.summary}\n{failures}"


def test_performance(cell_bench, profile, load_point, repeat, salt):
    load = profile["load"]
    tail, n = load_point.params["tail"], load["num_prompts"]
    work = cell(load, tail, n, load_point.seed, salt, list(_pool(profile["model"])))
    point = load_point.__class__(**{**load_point.__dict__, "num_prompts": n})
    check = CachedRunCheck(work.measured, profile["request_timeout_s"], timing_probes=load["timing_probes"], min_hit_share=load["min_hit_share"],
                           max_warm_share=load["max_warm_share"])
    row = cell_bench.measure(load["endpoint"], work.payloads(), point, profile["request_timeout_s"], repeat=repeat,
                             guard=hit_guard(work.prefix_len, load["min_hit_share"]), check=check)
    m = row.metrics
    assert m["completed"] == n, f"{m['failed']} of {n} requests failed: {row.error}"
    if cell_bench.spec.ignore_eos != "unsupported":
        assert length_honoured(m, n * load["output_len"]), "the stack did not honour max_tokens/ignore_eos"
    assert row.status == "ok", row.error
