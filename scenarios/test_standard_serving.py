"""Setting A: standard serving. Accuracy against the transformers reference, then a Poisson sweep,
greedy and sampled."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.bench import OutputCheck
from harness.generation import Prompt
from harness.lengths import length_honoured
from harness.prompts import draw, load_pool, salted, spread
from harness.sampling import SampledCheck

POOL = Path(__file__).parent / "data" / "instructions.jsonl"
pytestmark = pytest.mark.setting("A")


def accuracy_prompts(cfg: dict, salt: str | None) -> list[Prompt]:
    """Every other prompt goes through the chat template; lengths spread over the configured range;
    each carries the run's salt."""
    items = draw(load_pool(POOL), cfg["prompts"], cfg["seed"])
    lengths = spread(len(items), *cfg["max_tokens"])
    return [Prompt(id=item["id"], text=salted(item["text"] if i % 2 == 0 else item["text"] + "\n", salt),
                   chat=i % 2 == 0, max_tokens=n)
            for i, (item, n) in enumerate(zip(items, lengths))]


def load_prompts(load: dict, count: int, seed: int, salt: str | None) -> list[Prompt]:
    """A load point's requests over the pool: each instruction as a raw prompt with the run's salt,
    fixed output length."""
    return [Prompt(id=item["id"], text=salted(item["text"] + "\n", salt), chat=False, max_tokens=load["output_len"],
                   ignore_eos=load["ignore_eos"])
            for item in draw(load_pool(POOL), count, seed)]


def load_payloads(prompts: list[Prompt], sampling: dict | None = None, seed: int = 0) -> list[dict]:
    """Greedy requests, or sampled ones (`sampling`: temperature, top_p), each with a seed of its own."""
    greedy = {"temperature": 0}
    return [{"model": "default", "prompt": p.text, "max_tokens": p.max_tokens, "ignore_eos": p.ignore_eos}
            | ({**sampling, "seed": seed + i} if sampling else greedy) for i, p in enumerate(prompts)]


def reference_prompts(profile: dict, salt: str | None) -> tuple[list[Prompt], int]:
    """What the harness computes before a stack starts (conftest)."""
    return accuracy_prompts(profile["accuracy"], salt), profile["accuracy"]["top_logprobs"]


def test_accuracy(live_bench, profile, salt):
    verdict = live_bench.accuracy(accuracy_prompts(profile["accuracy"], salt), profile["request_timeout_s"],
                                  top_k=profile["accuracy"]["top_logprobs"])
    failures = "\n".join(f"  {p.prompt_id}: {p.reason}" for p in verdict.prompts if not p.ok)
    assert verdict.ok, f"{verdict.summary}\n{failures}"


def test_performance(cell_bench, profile, load_point, repeat, salt):
    load = profile["load"]
    n = load["num_prompts"] or round(load["duration_s"] * load_point.request_rate)
    point = load_point.__class__(**{**load_point.__dict__, "num_prompts": n})
    prompts = load_prompts(load, point.warmup + n, point.seed, salt)
    sampling = {k: point.params[k] for k in ("temperature", "top_p") if k in point.params}
    payloads = load_payloads(prompts, sampling, seed=(point.seed * 1009 + repeat * 101) % 2**30)
    # `judged` of the measured outputs, drawn after the cell: greedy ones against the reference run
    # past EOS, sampled ones by what can be checked of a sample (harness/sampling.py).
    check = (SampledCheck(prompts[point.warmup:], payloads[point.warmup:], load["endpoint"],
                          profile["request_timeout_s"], sample=load["judged"]) if sampling
             else OutputCheck(prompts[point.warmup:], sample=load["judged"]))
    row = cell_bench.measure(load["endpoint"], payloads, point, profile["request_timeout_s"], repeat=repeat,
                             check=check)
    m = row.metrics
    assert m["completed"] == n, f"{m['failed']} of {n} requests failed: {row.error}"
    if load["ignore_eos"] and cell_bench.spec.ignore_eos != "unsupported":
        assert length_honoured(m, n * load["output_len"]), "the stack did not honour max_tokens/ignore_eos"
    assert row.status == "ok", row.error
