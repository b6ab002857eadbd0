"""baselines/llamacpp_json.py: an OpenAI json_schema response_format becomes llama.cpp's own
`grammar` (from its own converter) on chat and completions, a schema it cannot convert is a 400
naming response_format (not llama-cpp-python's silent fallback to any JSON), and every other
request reaches the server byte for byte. llama-cpp-python is not in this venv: its converter is
stood in for; the spec is scored for real by the main job."""
from __future__ import annotations

import json
import sys
import types

import httpx
import pytest

from baselines import llamacpp_json

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
FMT = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}


@pytest.fixture
def converter(monkeypatch):
    seen = []

    def json_schema_to_gbnf(schema: str, prop_order=None):
        parsed = json.loads(schema)
        seen.append(parsed)
        if "bad" in parsed:
            raise KeyError("unknown keyword\nwith a second line")
        return f"root ::= {len(seen)}"

    grammar = types.ModuleType("llama_cpp.llama_grammar")
    grammar.json_schema_to_gbnf = json_schema_to_gbnf
    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_grammar", grammar)
    return seen


def test_a_json_schema_format_becomes_the_servers_grammar(converter):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "response_format": FMT}
    out = llamacpp_json.grammar_for(body)
    assert out == {"messages": body["messages"], "max_tokens": 8, "grammar": "root ::= 1"} and converter == [SCHEMA]
    for other in ({"prompt": "x"}, {"prompt": "x", "response_format": {"type": "json_object"}},
                  {"prompt": "x", "response_format": "text"}):
        assert llamacpp_json.grammar_for(other) is other  # llama.cpp's own handling, untouched
    with pytest.raises(llamacpp_json.BadFormat, match="json_schema.schema"):
        llamacpp_json.grammar_for({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {}}})
    with pytest.raises(llamacpp_json.BadFormat, match="cannot be converted") as err:
        llamacpp_json.grammar_for({"prompt": "x", "response_format": {**FMT, "json_schema": {"schema": {"bad": 1}}}})
    assert "\n" not in str(err.value)
    with pytest.raises(llamacpp_json.BadFormat, match="cannot parse the grammar"):  # as llama.cpp's parser says
        llamacpp_json.grammar_for({"prompt": "x", "response_format": FMT}, parses=lambda gbnf: False)
    assert llamacpp_json.grammar_for({"prompt": "x", "response_format": FMT}, parses=lambda gbnf: True)["grammar"]


async def echo(scope, receive, send):
    """A stand-in server: answers with the body and content-length it received."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    length = dict(scope["headers"]).get(b"content-length", b"").decode()
    payload = json.dumps({"body": body.decode(), "length": length}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_middleware_rewrites_posts_to_the_openai_endpoints_only(converter, anyio_backend):
    app = llamacpp_json.JsonSchemaRequests(echo)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for path in llamacpp_json.ENDPOINTS:
            got = (await client.post(path, json={"prompt": "x", "response_format": FMT})).json()
            assert json.loads(got["body"]) == {"prompt": "x", "grammar": f"root ::= {len(converter)}"}
            assert got["length"] == str(len(got["body"].encode()))
        raw = b'{"prompt": "x",  "max_tokens": 2}'
        assert (await client.post("/v1/completions", content=raw)).json()["body"] == raw.decode()  # byte for byte
        assert (await client.post("/v1/completions", content=b"not json")).json()["body"] == "not json"
        untouched = {"prompt": "x", "response_format": FMT}
        assert json.loads((await client.post("/v1/embeddings", json=untouched)).json()["body"]) == untouched
        bad = await client.post("/v1/chat/completions",
                                json={"messages": [], "response_format": {**FMT, "json_schema": {"schema": {"bad": 1}}}})
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "response_format" and "cannot be converted" in error["message"]
