"""`mlx_lm server` that honours `response_format`: JSON-schema decoding with an llguidance mask.

Run with mlx-lm's own interpreter, in place of `python -m mlx_lm`:
`python -m baselines.mlx_constrained server --model DIR --port P ...` (any mlx_lm command line).

mlx-lm 0.32.2's server ignores `response_format` (ml-explore/mlx-lm issue 1007), so plain mlx-lm
cannot be the MLX baseline of a JSON-schema setting. This is that baseline as a user would write
it: the schema of a request's `response_format` (`json_schema`, or `json_object` for any object)
becomes an llguidance grammar; its logits processor masks, at every step, the tokens the grammar
forbids and lets the matcher consume each sampled token; once the matcher has stopped only EOS is
left. Nothing is cached across requests (each compiles its own grammar) and no token is forced
ahead of the model. An invalid schema is an HTTP 400 with a one-line message. A request without
`response_format`, and everything else (batching, the prompt cache, sampling, token-id prompts
through baselines/mlx_token_prompts.py), is mlx-lm's unchanged. Only this module's Python runs in
the engine's environment: it imports nothing from the harness.
"""

from __future__ import annotations

import functools
import logging

import llguidance
import mlx.core as mx
import numpy as np
from llguidance.hf import from_tokenizer
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from baselines import mlx_token_prompts
from harness.grammar import validated

log = logging.getLogger(__name__)

# The JSON the grammar allows: compact, as the schema's own serialisation would be.
JSON_OPTIONS = {"whitespace_flexible": False}
ANY_OBJECT = {"type": "object"}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _schema(response_format: object) -> dict | None:
    """The JSON schema a request's `response_format` asks for; None for plain text."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise TypeError("response_format must be an object with a type")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind != "json_schema":
        raise ValueError(f"response_format type must be text, json_object or json_schema (got {kind!r})")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise TypeError("response_format json_schema must be an object with a `schema` object")
    return spec["schema"]


def grammar_for(response_format: object) -> str | None:
    """The llguidance grammar for `response_format`, checked; ValueError or TypeError, one line, if
    it is bad (mlx-lm answers either, raised while reading a request, with HTTP 400)."""
    schema = _schema(response_format)
    if schema is None:
        return None
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise ValueError(f"response_format: invalid JSON schema: {_one_line(str(exc))}") from None
    error = validated(grammar)
    if error:
        raise ValueError(f"response_format: invalid JSON schema: {_one_line(error)}")
    return grammar


@functools.lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of an mlx-lm TokenizerWrapper (about a second to build: once per model)."""
    return from_tokenizer(tokenizer._tokenizer, eos_token=sorted(tokenizer.eos_token_ids))


class GrammarLogitsProcessor:
    """One request's constraint, an mlx-lm logits processor: `(tokens so far, logits) -> logits`.

    Each call first lets the matcher consume the tokens sampled since the last call (the prompt is
    in `tokens` at the first call), then sets every logit the grammar forbids to -inf, including
    the ids past the tokenizer's vocabulary that the model's output layer may have."""

    def __init__(self, tokenizer, grammar: str):
        ll_tokenizer = _ll_tokenizer(tokenizer)
        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
        if self.matcher.is_error():
            raise ValueError(f"response_format: {_one_line(self.matcher.get_error())}")
        self.vocab_size = ll_tokenizer.vocab_size
        self.eos = sorted(tokenizer.eos_token_ids)
        self.bitmask = allocate_token_bitmask(1, self.vocab_size)
        self.seen: int | None = None  # len(tokens) at the last call

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self.seen is not None:
            self._consume(tokens[self.seen:].tolist())
        self.seen = len(tokens)
        allowed = mx.array(self._allowed(logits.shape[-1]))
        return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))

    def _consume(self, sampled: list[int]) -> None:
        for token in sampled:
            # False only past the end (a batch step computed after EOS) or on a forbidden token:
            # the matcher then stops or errs, and only EOS is left.
            if not self.matcher.consume_token(token):
                log.debug("grammar matcher refused token %d: %s", token, self.matcher.get_error())

    def _allowed(self, n_logits: int) -> np.ndarray:
        allowed = np.zeros(n_logits, dtype=bool)
        if self.matcher.is_stopped() or self.matcher.is_error():
            allowed[self.eos] = True
            return allowed
        fill_next_token_bitmask(self.matcher, self.bitmask)
        bits = np.unpackbits(self.bitmask[0].view(np.uint8), bitorder="little")
        n = min(n_logits, self.vocab_size)
        allowed[:n] = bits[:n]
        return allowed


def _reading_response_format(make_request):
    """Wrap an APIHandler request factory: its CompletionRequest carries the checked grammar.
    An error raised here is mlx-lm's own HTTP 400 with {"error": message}."""

    @functools.wraps(make_request)
    def handle(self):
        grammar = grammar_for(self.body.get("response_format"))
        request = make_request(self)
        request.grammar = grammar
        return request

    return handle


def patch() -> None:
    from mlx_lm import server

    mlx_token_prompts.patch()
    mlx_token_prompts.keep_leading_space()
    for name in ("handle_chat_completions", "handle_text_completions"):
        setattr(server.APIHandler, name, _reading_response_format(getattr(server.APIHandler, name)))

    # Both generation paths (batched and single) tokenize a request with the model's tokenizer and
    # then build its logits processors from its arguments: the processor is made at the first and
    # added at the second.
    tokenize = server.ResponseGenerator._tokenize
    make_logits_processors = server._make_logits_processors

    def tokenize_and_constrain(self, tokenizer, request, args):
        tokenized = tokenize(self, tokenizer, request, args)
        grammar = getattr(request, "grammar", None)
        args.grammar_processor = GrammarLogitsProcessor(tokenizer, grammar) if grammar else None
        return tokenized

    def logits_processors(args):
        processor = getattr(args, "grammar_processor", None)
        return make_logits_processors(args) + ([processor] if processor is not None else [])

    server.ResponseGenerator._tokenize = tokenize_and_constrain
    server._make_logits_processors = logits_processors


def main() -> None:
    patch()
    from mlx_lm.cli import main as mlx_lm_main

    mlx_lm_main()


if __name__ == "__main__":
    main()
