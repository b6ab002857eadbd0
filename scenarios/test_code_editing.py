"""Setting B: code editing with predicted outputs. Lossless oracle, then concurrency-1 median tok/s.

Every request: one chat turn (the buggy function, then "it has exactly one bug; reply with the
whole corrected function only"), temperature 0, `max_tokens` from the profile, and `prediction: {"type": "content",
"content": <the buggy function>}`. Every stack gets the same requests; one that ignores
`prediction` is a baseline without the speed-up. The dataset is built by
scenarios/workloads/code_edit.py (see its docstring and the YAML).
"""
from __future__ import annotations

import statistics

import pytest

from harness.bench import OutputCheck
from harness.generation import Generation, Prompt
from harness.prompts import salted
from scenarios.workloads.code_edit import PREDICTION, scenario_items, similarity

pytestmark = pytest.mark.setting("B")


def scored_items(profile: dict, log=lambda _: None) -> list[dict]:
    return scenario_items(profile["dataset"], profile["split"], log)[: profile["scored"]]


def warmup_items(profile: dict, n: int) -> list[dict]:
    """Warm-up requests come from the other split, so no scored item is seen before it is measured."""
    other = "tune" if profile["split"] == "heldout" else "heldout"
    return scenario_items(profile["dataset"], other)[-n:] if n else []


def prediction(item: dict) -> dict:
    return {"prediction": {"type": "content", "content": item["prediction"]}}


def accuracy_prompts(profile: dict, salt: str | None) -> list[Prompt]:
    return [Prompt(id=item["id"], text=salted(item["prompt"], salt), chat=True, max_tokens=profile["max_tokens"],
                   extra=prediction(item), template_kwargs=dict(profile["template_kwargs"]))
            for item in scored_items(profile)]


def payload(item: dict, profile: dict, salt: str | None) -> dict:
    body = {"model": "default", "messages": [{"role": "user", "content": salted(item["prompt"], salt)}],
            "max_tokens": profile["max_tokens"], "temperature": 0, **prediction(item)}
    if profile["template_kwargs"]:
        body["chat_template_kwargs"] = dict(profile["template_kwargs"])
    return body


def similarity_report(items: list[dict]):
    """Reported beside the verdict, never gated: how close each reply's code is to the original."""
    def report(outputs: list[Generation]) -> dict:
        per_item = {item["id"]: round(similarity(out.text, item["gold"]), 4) for item, out in zip(items, outputs)}
        echo = [similarity(item["buggy"], item["gold"]) for item in items]
        return {"similarity_to_gold": per_item,
                "median_similarity_to_gold": round(statistics.median(per_item.values()), 4),
                "exact_fixes": sum(1 for v in per_item.values() if v == 1.0),
                # what replying with the buggy code unchanged would score
                "median_similarity_of_buggy_code": round(statistics.median(echo), 4)}
    return report


def reference_prompts(profile: dict, salt: str | None) -> tuple[list[Prompt], int]:
    """What the harness computes before a stack starts (conftest)."""
    return [p.without_extra() for p in accuracy_prompts(profile, salt)], profile["top_logprobs"]


def test_accuracy(live_bench, profile, salt):
    items = scored_items(profile, live_bench.log)
    verdict = live_bench.lossless_accuracy(accuracy_prompts(profile, salt), profile["request_timeout_s"],
                                           top_k=profile["top_logprobs"], guard=PREDICTION,
                                           report=similarity_report(items))
    failures = "\n".join(f"  {line}" for line in verdict.failures())
    assert verdict.ok, f"{verdict.summary}\n{failures}"


def test_performance(cell_bench, profile, load_point, repeat, salt):
    load = profile["load"]
    items = scored_items(profile)[: load["num_prompts"]]
    payloads = [payload(item, profile, salt) for item in warmup_items(profile, load_point.warmup) + items]
    point = load_point.__class__(**{**load_point.__dict__, "num_prompts": len(items)})
    # Every measured reply is judged: they are the accuracy pass's prompts, whose references exist.
    check = OutputCheck([p.without_extra() for p in accuracy_prompts(profile, salt)][: len(items)],
                        top_k=profile["top_logprobs"])
    row = cell_bench.measure(load["endpoint"], payloads, point, profile["request_timeout_s"], repeat=repeat,
                             guard=PREDICTION, check=check)
    m = row.metrics
    assert m["completed"] == len(items), f"{m['failed']} of {len(items)} requests failed: {row.error}"
    assert row.status == "ok", row.error
