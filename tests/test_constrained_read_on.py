"""Past an accepted near-tie, a constrained output is read on under its grammar (harness/continuation.py).

Setting E's reference check is the near-tie rule on masked logprobs, which stops at the first near-tie.
So an output that takes the masked runner-up in a free string and then writes another request's
values, valid under the schema all the same, passed it. Here the reference, reading the output on
with its logits masked by the grammar, passes the honest masked-greedy continuation through the same
near-tie and fails the other request's continuation (and a text the grammar rejects). The reference
is the real SmolLM2-135M-Instruct; the outputs are what such stacks send.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.assets import ensure_model
from harness.continuation import constrained_misses, read_on
from harness.generation import Prompt
from harness.oracle import PromptVerdict, Verdict, compare_text
from harness.reference import (
    constraint_for,
    eos_strings,
    input_ids,
    reference_model,
    reference_outputs,
    special_strings,
)

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "summary"],
          "properties": {"name": {"type": "string"}, "summary": {"type": "string", "maxLength": 160}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
PROMPT = Prompt("tower", "Describe the Eiffel Tower in Paris as JSON with a name and a summary of its history.",
                chat=True, max_tokens=64, response_format=FORMAT)
OTHER = Prompt("soda", "Describe baking soda as JSON with a name and a summary of its uses in the kitchen.",
               chat=True, max_tokens=64, response_format=FORMAT)
TOP_K = 5
FIRST_TIE = 4  # the first token after which the stack may take the runner-up (inside the name's string)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_model("smollm2-135m-instruct")


def _masked_greedy(model_dir: Path, prompt: Prompt, forced: list[int], n: int) -> list[int]:
    """`forced`, then up to `n` more tokens of masked greedy decoding after `prompt`, all under its grammar."""
    import torch
    from transformers import DynamicCache

    tok, model = reference_model(model_dir)
    constraint, out, cache = constraint_for(model, tok, prompt), list(forced), DynamicCache(config=model.config)
    for token in forced:
        constraint.consume(token)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    with torch.inference_mode():
        step = model(torch.tensor([input_ids(tok, prompt) + out]), cache=cache, use_cache=True)
        while len(out) < len(forced) + n:
            token = int(constraint.mask(step.logits[0, -1].float()).argmax())
            if token in eos:
                break
            out.append(token)
            constraint.consume(token)
            step = model(torch.tensor([[token]]), cache=cache, use_cache=True)
    return out


@pytest.fixture(scope="module")
def tied(model_dir) -> list[int]:
    """The reference's masked greedy tokens up to the first place from FIRST_TIE where the grammar
    allows a choice, then its masked runner-up there."""
    import torch

    tok, model = reference_model(model_dir)
    head = input_ids(tok, PROMPT)
    greedy = _masked_greedy(model_dir, PROMPT, [], PROMPT.max_tokens)
    constraint = constraint_for(model, tok, PROMPT)
    with torch.inference_mode():
        logits = model(torch.tensor([head + greedy])).logits[0, len(head) - 1:].float()
    for at, token in enumerate(greedy):
        allowed = constraint.mask(logits[at])
        runner_up = int(allowed.topk(2).indices[1])
        if at >= FIRST_TIE and torch.isfinite(allowed[runner_up]):
            return greedy[:at] + [runner_up]
        constraint.consume(token)
    raise AssertionError("the grammar forced every token of the reference's output")


def _judged(model_dir: Path, text: str) -> tuple[PromptVerdict, Verdict]:
    ref = reference_outputs(model_dir, [PROMPT], TOP_K)[0]
    matched = compare_text(PROMPT.id, ref, text, special_strings(model_dir), eos_strings(model_dir), may_end=True)
    return matched, read_on(Verdict([matched]), model_dir, [PROMPT], [text], TOP_K)


def test_the_masked_greedy_continuation_after_a_near_tie_passes(model_dir, tied):
    tok, _ = reference_model(model_dir)
    text = tok.decode(_masked_greedy(model_dir, PROMPT, tied, PROMPT.max_tokens - len(tied)))
    matched, read = _judged(model_dir, text)
    assert matched.ok and matched.diverged_at == len(tied) - 1, matched
    assert read.ok, read.prompts[0]
    assert read.prompts[0].detail["read_on"]["outside_top_k"] <= 1


def test_another_requests_values_after_a_near_tie_fail_though_valid_under_the_schema(model_dir, tied):
    import json

    tok, _ = reference_model(model_dir)
    text = tok.decode(_masked_greedy(model_dir, OTHER, tied, PROMPT.max_tokens - len(tied)))
    json.loads(text)  # a valid object: the schema judge cannot tell
    matched, read = _judged(model_dir, text)
    assert matched.ok and matched.diverged_at == len(tied) - 1, matched  # the token match alone lets it through
    assert not read.ok, read.prompts[0]
    assert "under the grammar" in read.prompts[0].reason and read.prompts[0].reason.startswith(matched.reason)


def test_a_text_the_grammar_rejects_counts_every_token_from_there(model_dir):
    misses, tokens = constrained_misses(model_dir, PROMPT, '{"name": "Eiffel Tower"}', TOP_K)
    assert tokens > 3 and misses >= tokens - 3  # the space after the colon: compact JSON only
