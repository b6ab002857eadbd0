"""The sampled-output check (harness/sampling.py) passes true samples of the model and fails the
cheats it names: junk text, greedy decoding whatever is asked, a seed ignored, the wrong
temperature. The stacks here are doubles answering through a stand-in for the bench's `collect`
(a true sampler cannot be faked, so the honest one samples SmolLM2 itself with transformers)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.assets import ensure_model
from harness.generation import Prompt
from harness.records import Event, RequestRecord
from harness.sampling import SampledCheck, nucleus_misses

PROMPTS = [Prompt(f"p{i}", text, chat=False, max_tokens=16, ignore_eos=True) for i, text in enumerate([
    "Write a short story about a lighthouse keeper.\n", "Explain how a bicycle stays upright.\n",
    "List some uses of baking soda.\n", "Describe a walk through a city at night.\n"])]
SAMPLING = {"temperature": 1.0, "top_p": 0.9}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_model("smollm2-135m-instruct")


def _payloads() -> list[dict]:
    return [{"prompt": p.text, "max_tokens": p.max_tokens, "ignore_eos": True, **SAMPLING, "seed": 100 + i}
            for i, p in enumerate(PROMPTS)]


def _generate(model_dir: Path, payload: dict, mode: str) -> str:
    import torch

    from harness.reference import reference_model

    tok, model = reference_model(model_dir)
    ids = torch.tensor([tok(payload["prompt"])["input_ids"]])
    if mode == "junk":
        rng = random.Random(payload["seed"])
        return tok.decode([rng.randrange(len(tok)) for _ in range(payload["max_tokens"])])
    seed = {"unseeded": random.randrange(2**31), "greedy": 0}.get(mode, payload["seed"])
    torch.manual_seed(seed)
    temperature = 3.0 if mode == "hot" else payload["temperature"]
    kwargs = (dict(do_sample=False) if mode == "greedy"
              else dict(do_sample=True, temperature=temperature, top_p=payload["top_p"], top_k=0))
    out = model.generate(ids, max_new_tokens=payload["max_tokens"], min_new_tokens=payload["max_tokens"],
                         pad_token_id=tok.eos_token_id, **kwargs)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@dataclass
class DoubleBench:
    """What SampledCheck asks of a bench: the model's folder and `collect` (one request at a time)."""

    model_dir: Path
    mode: str

    def collect(self, endpoint: str, payloads: list[dict], timeout_s: float) -> list[RequestRecord]:
        return [_record(i, _generate(self.model_dir, p, self.mode)) for i, p in enumerate(payloads)]


def _record(index: int, text: str) -> RequestRecord:
    return RequestRecord(index=index, events=[Event(t=0.01, units=1)], final=text)


def _judge(model_dir: Path, mode: str):
    bench = DoubleBench(model_dir, mode)
    measured = bench.collect("completions", _payloads(), 60)
    check = SampledCheck(PROMPTS, _payloads(), "completions", 60, sample=len(PROMPTS))
    return check.judge(bench, measured, "cell")


def test_true_samples_of_the_model_pass(model_dir):
    outputs = _judge(model_dir, "honest")
    assert outputs.ok, outputs.summary
    replay = next(p for p in outputs.verdict.prompts if p.prompt_id == "seeded replay")
    assert replay.detail["alone_equals_measured"] == len(PROMPTS)


@pytest.mark.parametrize("mode, failing", [
    ("junk", "p"),                     # random token ids: outside every nucleus
    ("hot", "p"),                      # temperature 3 asked as 1: far into the tail
    ("greedy", "another seed"),        # ignores temperature: every seed the same text
    ("unseeded", "seeded replay"),     # ignores the seed: two texts for one request
], ids=["junk text", "wrong temperature", "greedy whatever asked", "seed ignored"])
def test_a_cheating_double_fails(model_dir, mode, failing):
    outputs = _judge(model_dir, mode)
    assert not outputs.ok
    bad = [p.prompt_id for p in outputs.verdict.prompts if not p.ok]
    assert any(b.startswith(failing) for b in bad), (bad, outputs.summary)


def test_the_nucleus_check_counts_what_the_model_would_not_sample(model_dir):
    prompt = Prompt("q", "The capital of France is", chat=False, max_tokens=2)
    assert nucleus_misses(model_dir, prompt, " Paris", 1.0, 0.9) == (0, 1)
    assert nucleus_misses(model_dir, prompt, " zebra", 1.0, 0.9) == (1, 1)


def test_special_tokens_left_out_of_a_text_past_eos_are_put_back(model_dir, monkeypatch):
    """The model's own greedy tokens run past EOS: its text leaves out EOS and the next turns' markers,
    and every one of its tokens is inside the nucleus once they are put back (and not before)."""
    import torch

    import harness.sampling
    from harness.reference import input_ids, reference_model

    tok, model = reference_model(model_dir)
    prompt = Prompt("q", "Is the sky blue? Answer yes or no.", chat=True, max_tokens=40)
    head, out = input_ids(tok, prompt), []
    with torch.inference_mode():
        for _ in range(prompt.max_tokens):
            out.append(int(model(torch.tensor([head + out])).logits[0, -1].argmax()))
    assert set(out) & set(tok.all_special_ids), tok.decode(out)
    text = tok.decode(out, skip_special_tokens=True)
    misses, tokens = nucleus_misses(model_dir, prompt, text, 1.0, 0.9)
    assert misses == 0 and tokens > 0
    monkeypatch.setattr(harness.sampling, "PUT_BACK_PASSES", 0)
    assert nucleus_misses(model_dir, prompt, text, 1.0, 0.9)[0] > 0
