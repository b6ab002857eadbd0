"""response_format for the reference server: a per-token llguidance mask as a transformers
`LogitsProcessor`, the way a user of `generate` writes constrained decoding. Nothing is skipped:
every token, forced or not, is one forward pass, and the mask is computed for one request at a
time. Whitespace is fixed (compact JSON), as the harness's reference decodes it."""

from __future__ import annotations

import json
from functools import lru_cache

import torch
from transformers import LogitsProcessor

from harness.grammar import validated

OPTIONS = {"whitespace_flexible": False}


@lru_cache(maxsize=256)
def _grammar(canonical: str) -> str:
    from llguidance import LLMatcher

    fmt = json.loads(canonical)
    schema = fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else {"type": "object"}
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=OPTIONS)
    except ValueError as exc:
        raise ValueError(f"the schema cannot be compiled: {exc}") from None
    problem = validated(grammar)
    if problem:
        raise ValueError(f"the schema cannot be compiled: {problem}")
    return grammar


def grammar_of(fmt: dict) -> str:
    """llguidance's grammar for a response_format (compiled once per schema); ValueError if it
    cannot be compiled."""
    return _grammar(json.dumps(fmt))  # key order kept: the grammar writes properties in the schema's order


class GrammarMask(LogitsProcessor):
    """Sets the logits the grammar forbids to -inf. The token chosen at a step reaches the matcher
    at the next call, as the last id of `input_ids`."""

    def __init__(self, ll_tokenizer, fmt: dict) -> None:
        from llguidance import LLMatcher
        from llguidance.torch import allocate_token_bitmask

        self.matcher = LLMatcher(ll_tokenizer, grammar_of(fmt))
        self.vocab = ll_tokenizer.vocab_size
        self.bitmask = allocate_token_bitmask(1, self.vocab)
        self.prompt_len: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        from llguidance.torch import apply_token_bitmask_inplace, fill_next_token_bitmask

        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        elif not self.matcher.consume_token(int(input_ids[0, -1])):
            raise RuntimeError(f"the grammar rejected a token: {self.matcher.get_error()}")
        fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        scores = scores.clone()
        apply_token_bitmask_inplace(scores, self.bitmask)
        scores[:, self.vocab:] = float("-inf")
        return scores
