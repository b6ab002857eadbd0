"""Structured output (skills/structured_output) on the real SmolLM2-135M-Instruct tokenizer and
model: masked greedy decoding through the skill equals plain masked greedy decoding with llguidance
(every step's mask and token), parses and validates; jump-forward changes no token; batched masks
equal single ones; forced tokens are each the lone allowed token; schema errors and the cache.
The tests that run the model are marked slow (the module: about a minute on 2 busy cores)."""

from __future__ import annotations

import copy
import inspect
import json
import random
from pathlib import Path

import llguidance
import llguidance.numpy as llg_np
import numpy as np
import pytest
import torch
from jsonschema import Draft202012Validator, FormatChecker

from skills.structured_output import (
    BatchMasker,
    Constraint,
    ConstraintError,
    GrammarCache,
    JumpStats,
    SchemaError,
    allowed_ids,
    apply_bitmask,
    constrained_greedy,
    jump_forward,
    tokenizer_from_hf,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "scenarios" / "data" / "json_schemas.jsonl"
DECODED = ("github_config-01", "function_call-01", "store-01")  # 37-60 tokens each on SmolLM2
WALKED = ("function_call-02", "github_config-05", "kubernetes-03", "analytics_event-04", "api_response-06",
          "store-08")
MAX_TOKENS = 96
SENTINEL = "sx-1a2b3c4d"


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, SCHEMAS.read_text().splitlines())}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from harness.assets import ensure_model

    return ensure_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def hf_tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def cache(hf_tok) -> GrammarCache:
    return GrammarCache.from_hf(hf_tok)


def response_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}


# --- the model's decodes, shared by the tests below ---


class HFForward:
    """forward(new tokens) -> the last position's logits; the K/V cache kept between calls.
    `fork()`: a copy taken after the prompt, whose first call (the prompt) returns the prompt's
    logits without recomputing them (one prefill serves both decodes of a schema)."""

    def __init__(self, model) -> None:
        from transformers import DynamicCache

        self.model = model
        self.kv = DynamicCache(config=model.config)
        self.arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.pending: np.ndarray | None = None
        self.last: np.ndarray | None = None

    def __call__(self, tokens) -> np.ndarray:
        if self.pending is not None:
            self.last, self.pending = self.pending, None
            return self.last.copy()
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(tokens)]), use_cache=True, logits_to_keep=1,
                             **{self.arg: self.kv})
        self.last = out.logits[0, -1].float().numpy()
        return self.last.copy()

    def fork(self) -> HFForward:
        twin = copy.copy(self)
        twin.kv, twin.pending = copy.deepcopy(self.kv), self.last
        return twin


def prompt_ids(hf_tok, row: dict) -> list[int]:
    schema = {k: v for k, v in row["schema"].items() if k != "$schema"}
    text = ("Reply with one JSON object that matches this JSON Schema, and nothing else.\n"
            f"Schema: {json.dumps(schema, separators=(',', ':'))}\nTask: {row['task'].replace('{sentinel}', SENTINEL)}\n")
    return list(hf_tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False))


def stepwise(forward, cache, prompt, schema, eos) -> tuple[list[int], list[list[int]]]:
    """Masked greedy decoding through the skill, one forward per token; at every step the mask and
    token are checked against plain llguidance (its own fill and apply, its own matcher). Returns
    the tokens and, per step, what `forced()` said before it (for the jump-forward checks)."""
    compiled = cache.get_schema(schema)
    c = Constraint(compiled, eos)
    masker = BatchMasker(compiled.vocab_size, max_batch=1)
    plain = llguidance.LLMatcher(cache.tokenizer, compiled.grammar, log_level=0)
    plain_mask = llg_np.allocate_token_bitmask(1, compiled.vocab_size)
    logits = forward(prompt)
    tokens, forced = [], []
    while len(tokens) < MAX_TOKENS:
        forced.append(c.forced())
        assert c.forced(verify=False) == forced[-1]  # llguidance's ff tokens passed the check
        row = masker.fill([c])
        llg_np.fill_next_token_bitmask(plain, plain_mask, 0)
        np.testing.assert_array_equal(row, plain_mask)
        token = int(np.argmax(masker.apply(logits.copy()[None], row)[0]))
        reference = logits.copy()[None]
        llg_np.apply_token_bitmask_inplace(reference, plain_mask)
        assert token == int(np.argmax(reference[0]))
        c.advance(token)
        assert plain.consume_token(token)
        tokens.append(token)
        if c.ended:
            break
        logits = forward([token])
    return tokens, forced


@pytest.fixture(scope="module")
def decodes(model_dir, hf_tok, cache, rows, one_torch_thread):
    """Per schema: step-by-step tokens (with the forced lists) and jump-forward's Decoded."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = hf_tok.eos_token_id
    out = {}
    for name in DECODED:
        prompt, schema = prompt_ids(hf_tok, rows[name]), rows[name]["schema"]
        forward = HFForward(model)
        forward(prompt)
        jumping = forward.fork()
        tokens, forced = stepwise(forward.fork(), cache, prompt, schema, eos)
        stats = JumpStats()
        jumped = constrained_greedy(jumping, prompt, Constraint(cache.get_schema(schema), eos), MAX_TOKENS,
                                    jump=True, stats=stats)
        out[name] = (tokens, forced, jumped, stats)
    return out


@pytest.mark.slow
def test_masked_greedy_through_the_skill_gives_valid_json_ended_by_the_grammar(decodes, hf_tok, rows) -> None:
    for name, (tokens, _, _, _) in decodes.items():
        assert tokens[-1] == hf_tok.eos_token_id, f"{name}: cut at {MAX_TOKENS} tokens, not ended by the grammar"
        text = hf_tok.decode(tokens[:-1])
        value = json.loads(text)
        errors = list(Draft202012Validator(rows[name]["schema"], format_checker=FormatChecker()).iter_errors(value))
        assert not errors, f"{name}: {text} -> {errors[0].message}"


@pytest.mark.slow
def test_jump_forward_gives_the_same_tokens_in_fewer_forwards(decodes) -> None:
    for name, (tokens, forced, jumped, stats) in decodes.items():
        assert jumped.tokens == tokens, name
        assert jumped.finished
        assert jumped.forwards == len(tokens) - stats.tokens  # the prompt, then one after each free choice but the last
        assert stats.tokens > 0 and stats.ends == 1  # the final EOS costs no forward either
        # every forced list, where taken, is exactly the tokens step-by-step decoding then produced
        for i, f in enumerate(forced):
            assert tokens[i:i + len(f)] == f, f"{name} step {i}"


def test_forced_tokens_are_each_the_only_allowed_token(cache, rows) -> None:
    """Seeded random walks through six schemas: wherever llguidance forces tokens, each one, in
    turn, is the single token the mask allows (so `verify` never cuts: canonical tokenization of
    the forced bytes is what the mask allows too)."""
    buf = np.zeros((1, (cache.tokenizer.vocab_size + 31) // 32), dtype=np.int32)
    forced_seen = 0
    for seed, name in enumerate(WALKED):
        rng = random.Random(seed)
        c = Constraint(cache.get_schema(rows[name]["schema"]), cache.tokenizer.eos_token)
        for _ in range(120):
            if c.done():
                break
            ff = c.forced(verify=False)
            probe = c.matcher.deep_copy()
            for token in ff:
                llg_np.fill_next_token_bitmask(probe, buf, 0)
                assert allowed_ids(buf[0]).tolist() == [token], f"{name}: {cache.tokenizer.dbg_tokens(ff)}"
                assert probe.consume_token(token)
            assert c.forced() == ff
            forced_seen += len(ff)
            c.allowed(buf[0])
            c.advance(rng.choice(allowed_ids(buf[0]).tolist()))
    assert forced_seen > 50


@pytest.mark.slow
def test_a_batch_of_schemas_gets_each_row_its_own_mask(cache, rows, decodes, hf_tok) -> None:
    eos = hf_tok.eos_token_id
    walks = {name: decodes[name][0] for name in DECODED}
    compiled = {name: cache.get_schema(rows[name]["schema"]) for name in DECODED}
    vocab = compiled[DECODED[0]].vocab_size
    masker, serial = BatchMasker(vocab, max_batch=2), BatchMasker(vocab, parallel=False)
    alone = np.zeros((1, (vocab + 31) // 32), dtype=np.int32)
    constraints = {name: Constraint(compiled[name], eos) for name in DECODED}
    plain = {name: llguidance.LLMatcher(cache.tokenizer, compiled[name].grammar, log_level=0) for name in DECODED}
    for step in range(max(map(len, walks.values()))):
        live = [n if step < len(walks[n]) else None for n in DECODED] + [None]
        batch = [constraints[n] if n else None for n in live]
        mask = masker.fill(batch)  # grows past max_batch; done rows EOS only; None rows all ones
        assert mask.shape == (len(batch), alone.shape[1])
        np.testing.assert_array_equal(serial.fill(batch), mask)  # row by row on this thread: the same
        for i, name in enumerate(live):
            if name is None:
                assert (mask[i] == -1).all()
                continue
            constraints[name].allowed(alone[0])
            np.testing.assert_array_equal(mask[i], alone[0])
            llg_np.fill_next_token_bitmask(plain[name], alone, 0)  # plain llguidance, its own matcher
            np.testing.assert_array_equal(mask[i], alone[0])
            constraints[name].advance(walks[name][step])
            assert plain[name].consume_token(walks[name][step])
    assert masker.stats.rows == sum(map(len, walks.values())) and masker.stats.mask_us_per_token > 0


@pytest.mark.slow
def test_done_sequences_allow_only_the_models_eos_and_bad_tokens_raise(cache, rows, decodes, hf_tok) -> None:
    eos = hf_tok.eos_token_id
    tokens = decodes[DECODED[0]][0]
    c = Constraint(cache.get_schema(rows[DECODED[0]]["schema"]), eos)
    row = np.zeros((c.mask_words,), dtype=np.int32)
    with pytest.raises(ConstraintError, match="rejected by the grammar"):
        c.advance(hf_tok.convert_tokens_to_ids("hello"))  # the JSON starts with '{"'
    c = Constraint(cache.get_schema(rows[DECODED[0]]["schema"]), eos)
    for t in tokens[:-1]:
        c.advance(t)
    assert c.done() and not c.ended
    c.allowed(row)
    assert allowed_ids(row).tolist() == [eos]
    assert jump_forward(c) == [eos] and c.ended and c.forced() == []
    with pytest.raises(ConstraintError, match="after the end"):
        c.advance(eos)
    with pytest.raises(ValueError, match="not an EOS id"):
        Constraint(cache.get_schema(rows[DECODED[0]]["schema"]), 0)


def test_a_model_with_more_logits_than_tokens_never_picks_the_extra_ids(cache, rows) -> None:
    c = Constraint(cache.get_schema(rows[DECODED[0]]["schema"]), cache.tokenizer.eos_token)
    mask = BatchMasker(c.compiled.vocab_size).fill([c, None])
    logits = np.random.default_rng(0).standard_normal((2, c.compiled.vocab_size + 100)).astype(np.float32)
    logits[:, c.compiled.vocab_size:] = 1e9  # padding ids the tokenizer does not have
    expected = logits.copy()
    llg_np.apply_token_bitmask_inplace(expected, mask)
    out = apply_bitmask(logits, mask)
    assert out is logits
    np.testing.assert_array_equal(out, expected)
    assert np.isinf(out[:, c.compiled.vocab_size:]).all()
    assert np.flatnonzero(np.isfinite(out[0])).tolist() == allowed_ids(mask[0]).tolist() == c.forced()[:1]


def test_bad_schemas_raise_schema_error_with_one_line(cache) -> None:
    cases = [({"type": "nonsense"}, "Invalid type: nonsense"),
             ({"type": "string", "pattern": "(["}, "regex parse error"),
             ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum (5) is greater than maximum (1)"),
             ({"$ref": "#/$defs/missing"}, "does not exist"),
             ({"type": "array", "contains": {"type": "integer"}}, "Unimplemented keys")]
    for schema, words in cases:
        with pytest.raises(SchemaError) as info:
            cache.get(response_format(schema))
        message = str(info.value)
        assert words in message and "\n" not in message and message.startswith("invalid JSON schema: ")
    for bad, words in [({"type": "xml"}, "response_format.type"), ({"type": "json_schema"}, "schema must be")]:
        with pytest.raises(SchemaError, match=words):
            cache.get(bad)
    assert cache.get({"type": "text"}) is None and cache.get(None) is None
    assert isinstance(SchemaError("x"), ValueError)


def test_the_cache_compiles_each_schema_once(hf_tok, cache) -> None:
    small = GrammarCache(cache.tokenizer, max_entries=2)
    a = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "string"}}, "required": ["x"]}
    reordered = {"type": "object", "properties": {"y": {"type": "string"}, "x": {"type": "integer"}}, "required": ["x"]}
    first = small.get(response_format(a))
    assert (small.stats.misses, small.stats.hits) == (1, 0) and first.compile_s > 0
    assert small.get(response_format(dict(a))) is first  # the same schema again: a hit
    assert (small.stats.misses, small.stats.hits) == (1, 1)
    assert small.stats.compile_s == pytest.approx(first.compile_s)
    # properties in another order are another grammar (llguidance writes them in the schema's order)
    other = small.get(response_format(reordered))
    assert other is not first and small.stats.misses == 2 and len(small) == 2
    assert other.new_matcher().compute_ff_tokens() != first.new_matcher().compute_ff_tokens()
    small.get({"type": "json_object"})  # evicts the least recently used: `a`
    assert len(small) == 2 and small.stats.evictions == 1
    assert small.get(response_format(a)) is not first and small.stats.misses == 4
    # a matcher per sequence is a copy: advancing one leaves the template and the others fresh
    c1, c2 = Constraint(first, hf_tok.eos_token_id), Constraint(first, hf_tok.eos_token_id)
    jump_forward(c1)
    assert c1.tokens > 0 and c2.tokens == 0 and c2.forced() == first.new_matcher().compute_ff_tokens()


def test_the_models_eos_is_the_one_allowed_when_the_tokenizer_lists_several(hf_tok, cache) -> None:
    im_end, endoftext = hf_tok.eos_token_id, hf_tok.convert_tokens_to_ids("<|endoftext|>")
    assert im_end != endoftext
    two = GrammarCache(tokenizer_from_hf(hf_tok, [endoftext, im_end]))
    c = Constraint(two.get_schema({"type": "boolean"}), endoftext)
    row = np.zeros((c.mask_words,), dtype=np.int32)
    c.advance(hf_tok.convert_tokens_to_ids("true"))
    assert c.done()
    c.allowed(row)
    assert allowed_ids(row).tolist() == [endoftext]
