"""After an accepted near-tie the reference reads the stack's output on (harness/continuation.py).

The token match stops at a near-tie, so an output that takes the reference's runner-up and then
goes on with another request's tokens (a mix-up of two sequences' state, say) passes it. Here that
output is shown to pass the token match and fail once the reference reads on, while the honest
output through the same near-tie (the model's greedy continuation after it) passes both. The
reference is the real SmolLM2; the outputs are what such stacks send.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.assets import ensure_model
from harness.continuation import read_on
from harness.generation import Prompt
from harness.oracle import PromptVerdict, Verdict, compare_text
from harness.reference import eos_strings, input_ids, reference_model, reference_outputs, special_strings

PROMPT = Prompt("bicycle", "Explain how a bicycle stays upright.\n", chat=False, max_tokens=32)
OTHER = Prompt("baking", "List some uses of baking soda in the kitchen.\n", chat=False, max_tokens=32)
TIE_AT = 3  # where the stack takes the reference's runner-up
TOP_K = 5


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_model("smollm2-135m-instruct")


def _greedy(model_dir: Path, ids: list[int], n: int) -> list[int]:
    import torch

    _, model = reference_model(model_dir)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
    return out


def _through_runner_up(model_dir: Path) -> tuple[list[int], int]:
    """The reference's greedy tokens to TIE_AT, then its runner-up there."""
    import torch

    tok, model = reference_model(model_dir)
    head = input_ids(tok, PROMPT)
    before = _greedy(model_dir, head, TIE_AT)
    with torch.inference_mode():
        runner_up = int(model(torch.tensor([head + before])).logits[0, -1].topk(2).indices[1])
    return before + [runner_up], len(head)


def _judged(model_dir: Path, text: str) -> tuple[PromptVerdict, Verdict]:
    ref = reference_outputs(model_dir, [PROMPT], TOP_K)[0]
    matched = compare_text(PROMPT.id, ref, text, special_strings(model_dir), eos_strings(model_dir), may_end=True)
    return matched, read_on(Verdict([matched]), model_dir, [PROMPT], [text], TOP_K)


def test_the_greedy_continuation_after_a_near_tie_passes(model_dir):
    tok, _ = reference_model(model_dir)
    tied, _ = _through_runner_up(model_dir)
    head = input_ids(tok, PROMPT)
    text = tok.decode(tied + _greedy(model_dir, head + tied, PROMPT.max_tokens - len(tied)))
    matched, read = _judged(model_dir, text)
    assert matched.ok and matched.diverged_at == TIE_AT, matched
    assert read.ok, read.prompts[0]
    assert read.prompts[0].detail["read_on"]["outside_top_k"] <= 1


def test_another_requests_tokens_after_a_near_tie_fail(model_dir):
    tok, _ = reference_model(model_dir)
    tied, _ = _through_runner_up(model_dir)
    elsewhere = _greedy(model_dir, input_ids(tok, OTHER), PROMPT.max_tokens - len(tied))
    text = tok.decode(tied + elsewhere)
    matched, read = _judged(model_dir, text)
    assert matched.ok and matched.diverged_at == TIE_AT, matched  # the token match alone lets it through
    assert not read.ok, read.prompts[0]
    verdict = read.prompts[0]
    assert "outside the reference's top-5" in verdict.reason and verdict.reason.startswith(matched.reason)


def test_only_prompts_that_passed_on_a_near_tie_are_read_on(tmp_path):
    """No model is loaded for these: a missing model folder would raise if one were read."""
    nowhere = tmp_path / "no-model"
    verdicts = [PromptVerdict("same", True, 5), PromptVerdict("failed", False, 2, 2, "differs")]
    read = read_on(Verdict(verdicts), nowhere, [PROMPT, PROMPT], ["a", "b"], TOP_K)
    assert read.prompts == verdicts


def test_an_output_whose_text_gives_another_token_count_than_it_was_written_in_is_not_read(model_dir):
    """Setting C's prompts are token ids run to max_tokens, and its seeded model writes junk whose text
    splits otherwise when tokenised again: read so, an honest output missed 132 of 135 tokens."""
    tok, _ = reference_model(model_dir)
    tied, _ = _through_runner_up(model_dir)
    ids_prompt = Prompt("ids", "<token ids>", chat=False, max_tokens=len(tied) + 1, ignore_eos=True,
                        ids=input_ids(tok, PROMPT))
    junk = tok.decode(tied) + " zebra quantum marmalade"  # more tokens than max_tokens says were written
    near = PromptVerdict("ids", True, TIE_AT, TIE_AT, f"near-tie at token {TIE_AT}")
    read = read_on(Verdict([near]), model_dir, [ids_prompt], [junk], TOP_K).prompts[0]
    assert read.ok and read.detail["read_on"].startswith("not read: the text tokenises again to")
    written = tok.decode(tied + _greedy(model_dir, ids_prompt.ids + tied, 1))  # as many tokens as were written
    read = read_on(Verdict([near]), model_dir, [ids_prompt], [written], TOP_K).prompts[0]
    assert "outside_top_k" in read.detail["read_on"]
