"""Property-based fuzzing of the response_format path (setting E): whatever schema a client sends,
the server of engine-e (skills/openai_server over skills/structured_output's GrammarCache) and
hf-reference's grammar answer with a compiled grammar or a one-line 400, never a 5xx, and the
server still serves a correct constrained request after. Schemas are drawn from JSON Schema's own
keywords with any JSON in their places (patterns that are not regexes, negative lengths,
dangling $refs, types that are not types, nesting)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_openai_server import ScriptedEngine

from skills.openai_server import ServerInfo, create_app
from skills.structured_output.grammar import GrammarCache

pytest.importorskip("llguidance")

KEYWORDS = ["type", "properties", "required", "items", "enum", "const", "pattern", "minLength", "maxLength",
            "minimum", "maximum", "anyOf", "oneOf", "allOf", "$ref", "$defs", "additionalProperties", "format",
            "minItems", "maxItems", "prefixItems", "not", "if", "then", "uniqueItems", "multipleOf"]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
           | st.text(max_size=10) | st.sampled_from(["string", "integer", "object", "array", "number", "null",
                                                      "boolean", "#/$defs/x", "#", "[a-", "^\\d+$", "date-time",
                                                      "email", "(?=x)"]))
schemas = st.recursive(
    st.dictionaries(st.sampled_from(KEYWORDS), scalars, max_size=4),
    lambda inner: st.dictionaries(st.sampled_from(KEYWORDS) | st.text(max_size=6),
                                  inner | st.lists(inner, max_size=3) | scalars
                                  | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_size=4),
    max_leaves=12)
formats = (st.fixed_dictionaries({"type": st.just("json_schema"),
                                  "json_schema": st.fixed_dictionaries({"name": st.text(max_size=8), "schema": schemas,
                                                                        "strict": st.booleans() | scalars})})
           | st.fixed_dictionaries({"type": st.sampled_from(["json_schema", "json_object", "text", "xml"]) | scalars,
                                    "json_schema": scalars | schemas}))
GOOD = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
    "a": {"type": "integer"}}, "required": ["a"]}, "strict": True}}


class GrammarEngine(ScriptedEngine):
    """The scripted engine, with engine-e's response_format check: the skill's grammar cache."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        self.grammars = GrammarCache.from_hf(tokenizer, max_entries=8)

    def check_response_format(self, fmt: dict) -> None:
        self.grammars.get(fmt)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from harness.assets import ensure_model

    return AutoTokenizer.from_pretrained(Path(ensure_model("smollm2-135m-instruct")))


@pytest.fixture(scope="module")
def served(tokenizer):
    with TestClient(create_app(GrammarEngine(tokenizer), ServerInfo("m", "/models/m", 0, server_name="fake")),
                    raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@SETTINGS
@given(fmt=formats | schemas | scalars)
def test_any_response_format_is_compiled_or_a_400_never_a_5xx(served, path, fmt):
    body = ({"prompt": "Answer in JSON.", "max_tokens": 4} if path == "/v1/completions"
            else {"messages": [{"role": "user", "content": "Answer in JSON."}], "max_tokens": 4})
    response = served.post(path, content=json.dumps({**body, "response_format": fmt}).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code < 500, (fmt, response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["param"] == "response_format" and "\n" not in error["message"], error
    assert served.post(path, json={**body, "response_format": GOOD}).status_code == 200


@SETTINGS
@given(fmt=formats)
def test_hf_reference_compiles_a_grammar_or_raises_the_400s_valueerror(fmt):
    from baselines.hf_reference.grammar import grammar_of
    from skills.openai_server.protocol import RequestError, _parse_response_format

    try:
        parsed = _parse_response_format(fmt)  # the server's shape check comes first, as in a request
    except RequestError:
        return
    if parsed is None:
        return
    try:
        assert isinstance(grammar_of(parsed), str)
    except ValueError as exc:  # said to the client as a 400
        assert str(exc), fmt


def test_a_panic_of_llguidance_on_a_schema_is_a_schema_it_cannot_compile(monkeypatch):
    """Seen once in CI's fuzzing: llguidance panicked (pyo3's PanicException, a BaseException) while
    cutting its error text inside a multi-byte character. A stand-in raises the same kind."""
    import llguidance

    from harness.grammar import validated

    class PanicException(BaseException):
        pass

    def panicking(grammar):
        raise PanicException("end byte index 100 is not a char boundary")

    def interrupted(grammar):
        raise KeyboardInterrupt

    monkeypatch.setattr(llguidance.LLMatcher, "validate_grammar", staticmethod(panicking))
    assert "llguidance failed on it" in validated("g")
    monkeypatch.setattr(llguidance.LLMatcher, "validate_grammar", staticmethod(interrupted))
    with pytest.raises(KeyboardInterrupt):
        validated("g")
