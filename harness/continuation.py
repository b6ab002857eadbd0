"""The stack's output after an accepted near-tie, which the token match leaves unjudged.

oracle.py compares tokens up to the first divergence and, where each side's token there is in the
other's top-k (a near-tie), stops: from there the two outputs are free to differ. So a stack that
takes a near-tie and then writes anything (a cache that goes wrong only past some length, a fault
after a fixed number of tokens) passed on every prompt where a near-tie came first. Here the
reference reads on: fed the prompt and the stack's whole output, it must find each output token
among its own top-k there, as it does for a greedy decoder of the same model, whose output leaves
the reference's argmax only at near-ties of its own. The reading is sampling.nucleus_misses' (top-k
instead of top-p; special tokens a text leaves out are put back). Its allowance is a few tokens, not
the sampled check's share: the text is tokenised again and may split otherwise in a place or two,
but a greedy output does not wander to its model's unlikely tokens, and text from elsewhere, once
in the context, is soon predictable to the reader (SmolLM2 reading another request's 28 tokens after
a near-tie found 7 outside its top-5, its own greedy continuation none).

Prompts with a response_format are left to their setting's own judge: this reference reads without
the grammar, under which a forced token need not be in its top-k.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.generation import Prompt
from harness.oracle import PromptVerdict, Verdict
from harness.sampling import nucleus_misses

ALLOWED_MISSES = 2        # tokens outside the top-k an output may have, re-tokenised ...
ALLOWED_MISS_SHARE = 0.02  # ... or this share of them, where that is more


def read_on(verdict: Verdict, model_dir: Path, prompts: list[Prompt], texts: list[str], top_k: int) -> Verdict:
    """`verdict` (one prompt verdict per prompt, in their order) with each prompt that passed on a
    near-tie failed where the reference, reading the stack's output on, finds it outside its top-k."""
    return Verdict([_read_on(v, model_dir, p, t, top_k) if _near_tied(v, p) else v
                    for v, p, t in zip(verdict.prompts, prompts, texts, strict=True)])


def _near_tied(verdict: PromptVerdict, prompt: Prompt) -> bool:
    return verdict.ok and verdict.diverged_at is not None and not prompt.response_format


def _read_on(verdict: PromptVerdict, model_dir: Path, prompt: Prompt, text: str, top_k: int) -> PromptVerdict:
    misses, tokens = nucleus_misses(model_dir, prompt, text, temperature=1.0, top_p=1.0, top_k=top_k)
    detail = (verdict.detail or {}) | {"read_on": {"tokens": tokens, "outside_top_k": misses}}
    if misses <= max(ALLOWED_MISSES, ALLOWED_MISS_SHARE * tokens):
        return replace(verdict, detail=detail)
    return replace(verdict, ok=False, detail=detail,
                   reason=f"{verdict.reason}; then {misses} of the output's {tokens} tokens lie outside the "
                          f"reference's top-{top_k}, read on the stack's own output")
