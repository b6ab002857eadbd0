"""A request's `response_format` as the reference decodes under it: plain masked greedy decoding.

At every step the logits of the tokens the grammar does not allow are set to -inf, the argmax is
taken and the grammar consumes it; once the grammar is complete only end-of-sequence is allowed.
No jump-forward and no drafts: this is what an optimised stack's output must equal. The grammar
is llguidance's for the JSON schema, with whitespace fixed (no free spaces or newlines between
tokens), so one schema has one compact spelling per value and a stack cannot pad its output.
This module is the oracle's own and shares no code with the stacks' skills.
"""
from __future__ import annotations

from functools import lru_cache

from harness.errors import HarnessError

# Fixed whitespace: compact JSON, as OpenAI's strict mode and vLLM/llguidance's default write it.
GRAMMAR_OPTIONS = {"whitespace_flexible": False}


class GrammarError(HarnessError):
    pass


def grammar_of(response_format: dict) -> str:
    """llguidance's grammar for an OpenAI `response_format` (json_schema or json_object)."""
    from llguidance import LLMatcher

    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise GrammarError("response_format json_schema has no schema object")
    elif kind == "json_object":
        schema = {"type": "object"}
    else:
        raise GrammarError(f"response_format type {kind!r} is not json_schema or json_object")
    grammar = LLMatcher.grammar_from_json_schema(schema, defaults=GRAMMAR_OPTIONS)
    problem = validated(grammar)
    if problem:
        raise GrammarError(f"response_format's schema cannot be compiled: {problem}")
    return grammar


@lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer, eos_ids: tuple[int, ...]):
    from llguidance.hf import from_tokenizer

    return from_tokenizer(tokenizer, eos_token=list(eos_ids) or None)


class Constraint:
    """One sequence's grammar: `mask(logits)` before each choice, `consume(token)` after it."""

    def __init__(self, tokenizer, response_format: dict, eos_ids: tuple[int, ...]):
        from llguidance import LLMatcher
        from llguidance.torch import allocate_token_bitmask

        self._ll = _ll_tokenizer(tokenizer, eos_ids)
        self._bitmask = allocate_token_bitmask(1, self._ll.vocab_size)  # refilled whole at every step
        self._matcher = LLMatcher(self._ll, grammar_of(response_format))
        self._eos = eos_ids
        if self._matcher.is_error():
            raise GrammarError(f"response_format's grammar: {self._matcher.get_error()}")

    def mask(self, logits):
        """`logits` (torch, one row of the model's vocabulary) with what the grammar forbids at -inf."""
        import llguidance.torch as lt

        masked = logits.clone()[None]
        if self._matcher.is_stopped():  # complete: nothing but end-of-sequence
            keep = masked[:, list(self._eos)].clone()
            masked[:] = float("-inf")
            masked[:, list(self._eos)] = keep
            return masked[0]
        lt.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        lt.apply_token_bitmask_inplace(masked, self._bitmask)
        masked[:, self._ll.vocab_size:] = float("-inf")  # ids the tokenizer does not have
        if not masked.isfinite().any():
            raise GrammarError(f"the grammar allows no token: {self._matcher.get_error() or 'no continuation'}")
        return masked[0]

    def consume(self, token: int) -> None:
        if self._matcher.is_stopped():
            return
        if not self._matcher.consume_token(token):
            raise GrammarError(f"the grammar rejected token {token}: {self._matcher.get_error()}")


def validated(grammar: str) -> str:
    """llguidance's verdict on a grammar ("" when it compiles). On some schemas it panics while
    cutting its own error text inside a multi-byte character (a Rust panic, raised by pyo3 as a
    BaseException): that is a schema it cannot compile too."""
    from llguidance import LLMatcher

    try:
        return LLMatcher.validate_grammar(grammar)
    except BaseException as exc:  # noqa: BLE001 - only the panic is kept, by its type's name
        if type(exc).__name__ != "PanicException":
            raise
        return f"llguidance failed on it: {str(exc)[:80]}"
