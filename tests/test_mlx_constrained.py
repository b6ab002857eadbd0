"""The mlx-lm-constrained baseline (baselines/mlx_constrained.py): mlx-lm with an llguidance logits
processor answers `response_format` with JSON its schema validates, on chat and completions; an
invalid schema is a 4xx with a message; a request without response_format is served as before."""
import json

import httpx
import pytest
from jsonschema import Draft202012Validator

from harness.assets import ensure_model
from harness.environments import engine_info
from harness.launcher import launch
from harness.stack import resolve_stack

STACK = "mlx-lm-constrained"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "role": {"enum": ["admin", "user", "guest"]}},
    "required": ["name", "role"],
    "additionalProperties": False,
}
EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string", "maxLength": 16}, "count": {"type": "integer", "minimum": 0,
                                                                           "maximum": 99},
                   "ok": {"type": "boolean"}},
    "required": ["event", "count", "ok"],
    "additionalProperties": False,
}


def json_schema(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if engine_info("mlx-lm") is None:
        pytest.skip("mlx-lm is not installed: python -m baselines install mlx-lm")
    spec = resolve_stack(STACK)
    model = ensure_model("smollm2-135m-instruct")
    with (launch(spec, model, tmp_path_factory.mktemp("logs")) as stack,
          httpx.Client(base_url=stack.base_url, timeout=120) as client):
        yield lambda route, body: client.post(route, json=spec.adapt({"temperature": 0, "max_tokens": 128, **body}))


def assert_valid(text: str, schema: dict) -> None:
    Draft202012Validator(schema).validate(json.loads(text))


@pytest.mark.slow
def test_chat_answers_with_json_its_schema_validates(server):
    reply = server("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Make up a user of a web site, with a name and a role."}],
        "response_format": json_schema("person", PERSON)})
    assert reply.status_code == 200, reply.text
    assert_valid(reply.json()["choices"][0]["message"]["content"], PERSON)


@pytest.mark.slow
def test_completion_answers_with_json_its_schema_validates(server):
    reply = server("/v1/completions", {"prompt": "A login event, as JSON:", "response_format": json_schema("event", EVENT)})
    assert reply.status_code == 200, reply.text
    assert_valid(reply.json()["choices"][0]["text"], EVENT)


@pytest.mark.slow
def test_json_object_answers_with_an_object(server):
    reply = server("/v1/completions", {"prompt": "A colour, as JSON:", "response_format": {"type": "json_object"}})
    assert reply.status_code == 200, reply.text
    assert isinstance(json.loads(reply.json()["choices"][0]["text"]), dict)


@pytest.mark.slow
@pytest.mark.parametrize("response_format, message", [
    (json_schema("bad", {"type": "nonsense"}), "invalid JSON schema: Invalid type: nonsense"),
    (json_schema("bad", {"type": "string", "pattern": "(("}), "invalid JSON schema: regex parse error"),
    ({"type": "xml"}, "response_format type must be"),
    ({"type": "json_schema"}, "must be an object with a `schema`"),
])
def test_an_invalid_response_format_is_a_one_line_400(server, response_format, message):
    reply = server("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                            "response_format": response_format})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert message in error and "\n" not in error


@pytest.mark.slow
def test_without_response_format_it_is_plain_mlx_lm(server):
    """Free text, as vanilla mlx-lm serves it: the same prompt unconstrained is not the JSON answer."""
    body = {"prompt": "A login event, as JSON:", "max_tokens": 16}
    plain = server("/v1/completions", body)
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["text"] and plain.json()["usage"]["completion_tokens"] > 0
    chat = server("/v1/chat/completions", {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"], chat.text
