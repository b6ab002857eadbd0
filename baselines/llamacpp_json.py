"""llama-cpp-python's OpenAI server, taking OpenAI's `response_format: {"type": "json_schema"}`.

Run with the llamacpp engine's interpreter in place of `python -m llama_cpp.server` (same
arguments): `python -m baselines.llamacpp_json --model FILE --port P ...`.

llama-cpp-python 0.3.36 knows `response_format` only as `{"type": "json_object", "schema": ...}`
on chat (OpenAI's `json_schema` shape is a 422), converts that schema with its own
`json_schema_to_gbnf` and, when the conversion fails, silently falls back to any JSON; its
completions take a GBNF `grammar` and no response_format. Here a `json_schema` request on either
endpoint gets the GBNF that same converter writes, as the request's `grammar` (the server's own
parameter), and a schema it cannot convert, or whose grammar llama.cpp's parser then refuses
(which crashes the server when handed to it), is an HTTP 400, not free JSON or a crash. Everything else
(whitespace as llama.cpp's grammar allows it, sampling, the GGUF model) is llama.cpp's unchanged.
Only this module's Python runs in the engine's environment: it imports nothing from the harness.
"""

from __future__ import annotations

import json
from collections.abc import Callable

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


class BadFormat(ValueError):
    """The response_format cannot be served; the message is one line, for an HTTP 400."""


def grammar_for(body: dict, parses: Callable[[str], bool] | None = None) -> dict:
    """The request with an OpenAI `json_schema` response_format turned into llama.cpp's `grammar`;
    other requests unchanged. `parses`: whether llama.cpp's own parser takes a GBNF (`gbnf_parser`)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return body
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise BadFormat("response_format json_schema needs json_schema.schema, an object")
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # noqa: BLE001 (the converter raises whatever its visitor hits)
        raise BadFormat(" ".join(f"the schema cannot be converted to a grammar: {exc}".split())[:300]) from None
    if parses is not None and not parses(gbnf):
        # e.g. a pattern's "\\." becomes an escape llama.cpp's parser does not know; handed to the
        # server, the failed grammar crashes it (SIGSEGV) on the request
        raise BadFormat("llama.cpp cannot parse the grammar its own converter wrote for this schema")
    return {**{k: v for k, v in body.items() if k != "response_format"}, "grammar": gbnf}


def gbnf_parser(model_path: str) -> Callable[[str], bool]:
    """Whether llama.cpp parses a GBNF for this model's vocabulary: the sampler the server would
    build, built and freed here (llama.cpp returns none for a grammar it cannot parse)."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), params)
    if not model:
        raise SystemExit(f"llamacpp_json: cannot read the vocabulary of {model_path}")
    vocab = llama_cpp.llama_model_get_vocab(model)

    def parses(gbnf: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not sampler:
            return False
        llama_cpp.llama_sampler_free(sampler)
        return True

    return parses


class JsonSchemaRequests:
    """ASGI middleware: rewrites the JSON body of a POST to the OpenAI endpoints (`grammar_for`)."""

    def __init__(self, app, parses: Callable[[str], bool] | None = None) -> None:
        self.app = app
        self.parses = parses

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in ENDPOINTS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
            changed = grammar_for(body, self.parses) if isinstance(body, dict) else body
            if changed is not body:
                raw = json.dumps(changed).encode()
        except BadFormat as exc:
            await _error(send, str(exc))
            return
        except ValueError:
            pass  # not JSON: the server says so itself
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(raw)).encode())]}
        await self.app(scope, replay, send)


async def _error(send, message: str) -> None:
    payload = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                    "param": "response_format", "code": None}}).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    import sys

    import llama_cpp.server.app as server_app

    parses = gbnf_parser(sys.argv[sys.argv.index("--model") + 1])
    create_app = server_app.create_app
    server_app.create_app = lambda *a, **kw: JsonSchemaRequests(create_app(*a, **kw), parses)
    from llama_cpp.server import __main__ as server_main  # binds create_app at import: after the patch

    server_main.main()


if __name__ == "__main__":
    main()
