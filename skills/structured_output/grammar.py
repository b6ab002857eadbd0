"""Grammars compiled once per distinct schema.

A request's `response_format` becomes an llguidance grammar, and that grammar an `LLMatcher`.
Building a matcher from the grammar string is the expensive part (the JSON schema is compiled
to a lexer and a parser there: 1-7 ms for setting E's schemas), while `LLMatcher.deep_copy()` of
a fresh matcher costs microseconds. So the cache keeps, per schema, the grammar string and one
*template* matcher that never consumes a token; every sequence gets a copy of it. Building the
template is also the validation: llguidance's constructor never raises, it records the first
error (`is_error()` / `get_error()`), which the cache turns into a `SchemaError`.

The key is the schema's canonical JSON (sorted keys, no spaces), so two requests that spell the
same schema differently share one entry; the request's `name` and `strict` do not enter it.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import llguidance

# No free whitespace: the constrained text is the compact JSON, and the model is never asked to
# choose between equivalent spellings (a grammar with optional whitespace lets a small model
# loop on newlines until max_tokens).
JSON_DEFAULTS = {"whitespace_flexible": False}
JSON_OBJECT_SCHEMA = {"type": "object"}  # OpenAI's "json_object": any JSON object


class SchemaError(ValueError):
    """The response_format cannot be compiled; the message is one line, fit for an HTTP 400."""


@dataclass(frozen=True)
class CompiledGrammar:
    """One schema, compiled: `template` is a fresh matcher to copy per sequence, never advanced."""

    key: str  # canonical JSON of the schema
    grammar: str  # llguidance's grammar string (what `LLMatcher` was built from)
    template: llguidance.LLMatcher
    vocab_size: int  # the tokenizer's: bits per mask row (a model may have more logits)
    eos_ids: tuple[int, ...]  # the ids the grammar allows where the JSON may end
    compile_s: float

    def new_matcher(self) -> llguidance.LLMatcher:
        return self.template.deep_copy()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0  # compiles, failed ones included
    evictions: int = 0
    compile_s: float = 0.0  # summed over every compile

    @property
    def mean_compile_s(self) -> float:
        return self.compile_s / self.misses if self.misses else 0.0


def schema_of(response_format: dict | None) -> dict | None:
    """The JSON schema a response_format asks for, or None for unconstrained text.

    Accepts OpenAI's shapes: {"type": "json_schema", "json_schema": {"schema": {...}, ...}},
    {"type": "json_object"} and {"type": "text"} (or None)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise SchemaError("response_format must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_SCHEMA
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise SchemaError("response_format.json_schema.schema must be an object")
        return schema
    raise SchemaError(f"response_format.type must be text, json_object or json_schema, not {kind!r}")


def canonical_key(schema: dict) -> str:
    """The schema's compact JSON, keys in their given order: llguidance writes an object's
    properties in the order the schema lists them, so a reordered schema is another grammar."""
    try:
        return json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"the schema is not JSON: {exc}") from None


def tokenizer_from_hf(hf_tokenizer, eos_ids: int | Sequence[int] | None = None) -> llguidance.LLTokenizer:
    """llguidance's view of a fast HF tokenizer (about a second and a few MB: build it once).

    `eos_ids`: the model's end-of-sequence id(s), if they differ from the tokenizer's own
    `eos_token_id` (a chat model ending turns on `<|im_end|>`, a generation_config listing
    several). The grammar allows exactly these ids where the JSON may end."""
    import llguidance.hf

    eos = list(eos_ids) if isinstance(eos_ids, Sequence) else eos_ids
    return llguidance.hf.from_tokenizer(hf_tokenizer, eos_token=eos)


class GrammarCache:
    """response_format -> CompiledGrammar, compiled once per distinct schema, LRU-bounded.

    Failed compiles are not cached (a client retrying a bad schema pays the compile again, and
    the table cannot fill with garbage). Not thread-safe: use it from the engine's thread."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, max_entries: int = 256,
                 compile_options: dict | None = None, log_level: int = 0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self.options = dict(JSON_DEFAULTS if compile_options is None else compile_options)
        self.log_level = log_level
        self.stats = CacheStats()
        self._entries: OrderedDict[str, CompiledGrammar] = OrderedDict()

    @classmethod
    def from_hf(cls, hf_tokenizer, eos_ids: int | Sequence[int] | None = None, **kwargs) -> GrammarCache:
        return cls(tokenizer_from_hf(hf_tokenizer, eos_ids), **kwargs)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, response_format: dict | None) -> CompiledGrammar | None:
        """The compiled grammar for a request's response_format; None when it asks for plain text."""
        schema = schema_of(response_format)
        return None if schema is None else self.get_schema(schema)

    def get_schema(self, schema: dict) -> CompiledGrammar:
        key = canonical_key(schema)
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return hit
        compiled = self._compile(key, schema)
        self._entries[key] = compiled
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.stats.evictions += 1
        return compiled

    def _compile(self, key: str, schema: dict) -> CompiledGrammar:
        started = time.perf_counter()
        try:
            grammar, template = self._build(schema)
        finally:  # a failed compile costs time too
            elapsed = time.perf_counter() - started
            self.stats.misses += 1
            self.stats.compile_s += elapsed
        return CompiledGrammar(key, grammar, template, self.tokenizer.vocab_size,
                               tuple(self.tokenizer.eos_tokens), elapsed)

    def _build(self, schema: dict) -> tuple[str, llguidance.LLMatcher]:
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=self.options)
        except (ValueError, TypeError) as exc:
            raise SchemaError(_one_line(f"invalid JSON schema: {exc}")) from None
        template = llguidance.LLMatcher(self.tokenizer, grammar, log_level=self.log_level)
        if template.is_error():
            raise SchemaError(_one_line(f"invalid JSON schema: {template.get_error()}"))
        return grammar, template


def _one_line(message: str, limit: int = 300) -> str:
    """llguidance's messages can span lines (a regex error draws a caret under the pattern)."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
