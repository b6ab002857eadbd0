"""Property-based fuzzing of the OpenAI server layer that engine-a, engine-b, engine-c and
hf-reference share (skills/openai_server): whatever JSON (or non-JSON) a client sends, the answer is
a 2xx or a 4xx with a message, never a 5xx, and the server still answers a correct request after.
Bodies are valid requests with fields replaced by arbitrary JSON (so the fuzz reaches the checks
behind the first one), and arbitrary objects of the API's field names."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_openai_server import ScriptedEngine

from skills.openai_server import ServerInfo, create_app

FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n",
          "stream", "stream_options", "logprobs", "top_logprobs", "stop", "seed", "ignore_eos", "prediction", "echo",
          "user", "presence_penalty", "frequency_penalty", "logit_bias", "min_tokens", "response_format", "tools",
          "suffix", "best_of"]
VALID = {"/v1/completions": {"prompt": "The capital of France is", "max_tokens": 4},
         "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}}
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["user", "assistant", "system", "text", "content", "", "\x00"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(["role", "content", "type", "text", "include_usage", "x"]) | st.text(max_size=6),
                                        inner, max_size=4), max_leaves=10)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]) | values,
                                           "content": st.text(max_size=30) | values}), max_size=4)


@pytest.fixture(scope="module")
def served(tokenizer_module):
    engine = ScriptedEngine(tokenizer_module)
    with TestClient(create_app(engine, ServerInfo("m", "/models/m", 0, server_name="fake")),
                    raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer_module():
    from pathlib import Path

    from transformers import AutoTokenizer

    from harness.assets import ensure_model

    return AutoTokenizer.from_pretrained(Path(ensure_model("smollm2-135m-instruct")))


def post(client: TestClient, path: str, body) -> None:
    """Send `body` (JSON, or raw bytes) and check the answer's class; a stream is read to its end."""
    content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    with client.stream("POST", path, content=content, headers={"content-type": "application/json"}) as response:
        text = b"".join(response.iter_bytes()).decode(errors="replace")
        assert response.status_code < 500, (path, body, response.status_code, text[:500])
        if response.status_code >= 400:
            assert json.loads(text)["error"]["message"], text[:500]


def still_serves(client: TestClient, path: str) -> None:
    response = client.post(path, json=VALID[path])
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4, response.text


@pytest.mark.parametrize("path", list(VALID))
@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=4))
def test_a_valid_request_with_fields_replaced_by_any_json_is_answered_without_a_5xx(served, path, changes):
    post(served, path, {**VALID[path], **changes})
    still_serves(served, path)


@pytest.mark.parametrize("path", list(VALID))
@SETTINGS
@given(body=st.dictionaries(st.sampled_from(FIELDS), values, max_size=6) | values)
def test_any_json_body_is_answered_without_a_5xx(served, path, body):
    post(served, path, body)
    still_serves(served, path)


@SETTINGS
@given(conversation=messages)
def test_any_conversation_is_answered_without_a_5xx(served, conversation):
    post(served, "/v1/chat/completions", {"messages": conversation, "max_tokens": 3})
    still_serves(served, "/v1/chat/completions")


@SETTINGS
@given(raw=st.binary(max_size=64))
def test_bytes_that_are_not_json_are_a_400(served, raw):
    post(served, "/v1/completions", raw)
    still_serves(served, "/v1/completions")


@pytest.mark.parametrize("path", list(VALID))
def test_a_body_nested_past_the_decoders_recursion_limit_is_a_400(served, path):
    post(served, path, b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    still_serves(served, path)
