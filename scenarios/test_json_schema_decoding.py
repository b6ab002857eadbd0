"""Setting E: JSON-schema constrained decoding. The schema judge, the constrained reference and
(for a stack declaring `jump_forward`) the stack with its shortcuts off, then concurrency 1 and a
concurrent point, every measured output judged (see the YAML's header)."""
from __future__ import annotations

import pytest

from harness.generation import Prompt
from scenarios.workloads.json_schema import (
    JUMP_FORWARD,
    SchemaCheck,
    SchemaTask,
    draw_tasks,
    profile_tasks,
    outputs_judge,
    payload,
    prompt,
)

pytestmark = pytest.mark.setting("E")


def scored_tasks(profile: dict) -> list[SchemaTask]:
    return draw_tasks(profile_tasks(profile), profile["tasks"], profile["seed"])


def accuracy_prompts(profile: dict, salt: str | None) -> list[Prompt]:
    """Every other task on chat, the rest on completions."""
    return [prompt(task, salt, chat=i % 2 == 0) for i, task in enumerate(scored_tasks(profile))]


def load_prompts(profile: dict, salt: str | None) -> list[Prompt]:
    return [prompt(task, salt, chat=profile["load"]["endpoint"] == "chat") for task in scored_tasks(profile)]


def reference_prompts(profile: dict, salt: str | None) -> tuple[list[Prompt], int]:
    """What the harness computes before a stack starts (conftest): both passes' prompts."""
    return accuracy_prompts(profile, salt) + load_prompts(profile, salt), profile["top_logprobs"]


def test_accuracy(live_bench, profile, salt):
    prompts = accuracy_prompts(profile, salt)
    judge = outputs_judge(scored_tasks(profile), salt, live_bench.model_dir, prompts, profile["top_logprobs"],
                          profile.get("sentinel_gate"))
    verdict = live_bench.lossless_accuracy(prompts, profile["request_timeout_s"], top_k=profile["top_logprobs"],
                                           guard=JUMP_FORWARD, judge_outputs=judge)
    failures = "\n".join(f"  {line}" for line in verdict.failures())
    assert verdict.ok, f"{verdict.summary}\n{failures}"


def test_performance(cell_bench, profile, load_point, repeat, salt):
    load = profile["load"]
    tasks, prompts = scored_tasks(profile)[: load["num_prompts"]], load_prompts(profile, salt)[: load["num_prompts"]]
    chat = load["endpoint"] == "chat"
    warmup = [prompt(t, salt, chat) for t in draw_tasks(profile_tasks(profile), load_point.warmup, profile["seed"],
                                                         skip=profile["tasks"])]
    point = load_point.__class__(**{**load_point.__dict__, "num_prompts": len(prompts)})
    row = cell_bench.measure(load["endpoint"], [payload(p) for p in warmup + prompts], point,
                             profile["request_timeout_s"], repeat=repeat, guard=JUMP_FORWARD,
                             check=SchemaCheck(tasks, prompts, salt, profile["top_logprobs"], profile.get("sentinel_gate")))
    m = row.metrics
    assert m["completed"] == len(prompts), f"{m['failed']} of {len(prompts)} requests failed: {row.error}"
    assert row.status == "ok", row.error
