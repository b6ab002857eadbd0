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

A prompt with a response_format is read under its grammar, as its reference was decoded: at each
position the reference's logits masked by the grammar (harness/grammar.py, fed the output's tokens so
far), each output token among the top-k of what the grammar allows there. A token the grammar rejects
is a miss too; the schema judge fails such an output on its own.

Transcripts (harness/transcription.py) are not read on. Their near-tie is bounded (an alternative
within MAX_GAP nats of the reference's token); every partial of a stream is judged from its first
token against the transcript of its own audio prefix, so what a stack writes after a near-tie in
one partial is judged again in the next; and the tiny speech model's seeded weights write
byte-level pieces whose text, tokenised again, need not give back the same tokens.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.generation import Prompt
from harness.grammar import GrammarError
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
    return verdict.ok and verdict.diverged_at is not None


def _read_on(verdict: PromptVerdict, model_dir: Path, prompt: Prompt, text: str, top_k: int) -> PromptVerdict:
    unread = _unfaithful(model_dir, prompt, text)
    if unread:
        return replace(verdict, detail=(verdict.detail or {}) | {"read_on": unread})
    if prompt.response_format:
        misses, tokens = constrained_misses(model_dir, prompt, text, top_k)
    else:
        misses, tokens = nucleus_misses(model_dir, prompt, text, temperature=1.0, top_p=1.0, top_k=top_k)
    detail = (verdict.detail or {}) | {"read_on": {"tokens": tokens, "outside_top_k": misses}}
    if misses <= max(ALLOWED_MISSES, ALLOWED_MISS_SHARE * tokens):
        return replace(verdict, detail=detail)
    return replace(verdict, ok=False, detail=detail,
                   reason=f"{verdict.reason}; then {misses} of the output's {tokens} tokens lie outside the "
                          f"reference's top-{top_k}, read on the stack's own output"
                          + (" under the grammar" if prompt.response_format else ""))


def _unfaithful(model_dir: Path, prompt: Prompt, text: str) -> str:
    """Why `text`, tokenised again, is not the stack's tokens ("" where it may be). A prompt of token
    ids run to max_tokens (random ids, after which a seeded model writes byte-level junk) says how
    many tokens the stack wrote; where the text gives another count, the reader would read other
    tokens than the stack's, and after one such split it misses nearly all (an honest fp32 engine on
    the hybrid model: 132 of 135 after a near-tie)."""
    if prompt.ids is None or not prompt.ignore_eos:
        return ""
    from harness.reference import reference_model

    tok, _ = reference_model(model_dir)
    count = len(tok(text, add_special_tokens=False)["input_ids"])
    if count == prompt.max_tokens:
        return ""
    return f"not read: the text tokenises again to {count} tokens, the stack wrote {prompt.max_tokens}"


def constrained_misses(model_dir: Path, prompt: Prompt, text: str, top_k: int) -> tuple[int, int]:
    """(tokens of `text` outside the top-k of the reference's logits masked by the prompt's grammar,
    tokens of `text`), `text` tokenised on its own after the prompt's ids. From a token the grammar
    rejects on, every token counts as a miss: the grammar cannot follow the text further."""
    import torch

    from harness.reference import constraint_for, input_ids, reference_model

    tok, model = reference_model(model_dir)
    head = input_ids(tok, prompt)
    tail = tok(text, add_special_tokens=False)["input_ids"]
    if not tail:
        return 0, 0
    with torch.inference_mode():
        logits = model(torch.tensor([head + tail])).logits[0, len(head) - 1: -1].float()
    constraint, misses = constraint_for(model, tok, prompt), 0
    for i, token in enumerate(tail):
        try:
            allowed = constraint.mask(logits[i])
        except GrammarError:
            return misses + len(tail) - i, len(tail)
        if not torch.isfinite(allowed[token]):
            return misses + len(tail) - i, len(tail)
        top = allowed.topk(min(top_k, int(torch.isfinite(allowed).sum()))).indices
        misses += int(token not in top.tolist())
        constraint.consume(token)
    return misses, len(tail)
