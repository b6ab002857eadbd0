"""The FastAPI app over any `ServingEngine`: routes, SSE streaming, and OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from skills.engine_api import EngineStream, GenerationFailed, SamplingParams, ServingEngine
from .outputs import collect, text_deltas
from .prompts import (
    chat_prompt_ids,
    completion_prompt_ids,
    prediction_ids,
    resolve_max_tokens,
)
from .protocol import Common, RequestError, error_body, parse_chat, parse_completion
from .responses import ChatShaper, CompletionShaper, Shaper, Usage, token_text_fn

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5


@dataclass(frozen=True)
class ServerInfo:
    served_model_name: str
    model_dir: str
    started: int
    server_name: str = "hf-reference"  # in /v1/models `owned_by` and in "not supported by ..." errors


def create_app(engine: ServingEngine, info: ServerInfo) -> FastAPI:
    app = FastAPI(title=info.server_name, docs_url=None, redoc_url=None, openapi_url=None)
    token_text = token_text_fn(engine.tokenizer)
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": info.served_model_name, "object": "model", "created": info.started,
                "owned_by": info.server_name, "root": info.model_dir, "max_model_len": engine.max_model_len}
        runtime = getattr(engine, "runtime", None)
        if runtime:  # what the engine chose on this machine (kernels, load-time checks): rows record it
            card["runtime"] = runtime
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics() -> dict[str, int]:
        return engine.metrics()

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache() -> dict[str, bool]:
        return {"reset": engine.reset_prefix_cache()}

    @app.post("/v1/completions")
    async def completions(request: Request):
        parsed = parse_completion(await _json_body(request), info.server_name)
        prompt_ids = completion_prompt_ids(engine.tokenizer, parsed.prompt, engine.vocab_size)
        shaper = CompletionShaper(info.served_model_name, token_text)
        return await _serve(engine, request, prompt_ids, parsed.common, shaper, info.server_name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        parsed = parse_chat(await _json_body(request), info.server_name)
        prompt_ids = chat_prompt_ids(engine.tokenizer, parsed.messages)
        shaper = ChatShaper(info.served_model_name, token_text)
        return await _serve(engine, request, prompt_ids, parsed.common, shaper, info.server_name)

    return app


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # json's decoder recurses once per level of nesting
        raise RequestError("the request body is nested too deeply to read") from exc


def _sampling(common: Common, prompt_len: int, max_model_len: int, tokenizer) -> SamplingParams:
    return SamplingParams(
        max_tokens=resolve_max_tokens(prompt_len, common.max_tokens, max_model_len),
        temperature=common.temperature,
        top_p=common.top_p,
        seed=common.seed,
        stop=common.stop,
        ignore_eos=common.ignore_eos,
        top_logprobs=common.top_logprobs,
        prediction=prediction_ids(tokenizer, common.prediction),
        response_format=common.response_format,
    )


def _check_response_format(engine: ServingEngine, fmt: dict | None, server: str) -> None:
    """An engine honours a response_format only where it says so (`check_response_format`, which
    raises ValueError for a schema it cannot compile); free text for a schema is never served."""
    if fmt is None:
        return
    check = getattr(engine, "check_response_format", None)
    if check is None:
        raise RequestError(f"response_format {fmt['type']} is not supported by {server}", "response_format")
    try:
        check(fmt)
    except ValueError as exc:
        raise RequestError(f"response_format: {exc}", "response_format") from None


async def _serve(engine: ServingEngine, request: Request, prompt_ids: list[int], common: Common,
                 shaper: Shaper, server: str):
    _check_response_format(engine, common.response_format, server)
    params = _sampling(common, len(prompt_ids), engine.max_model_len, engine.tokenizer)
    if common.stream:
        # The role chunk goes out before generation starts, so it is built before submitting.
        prelude = shaper.prelude(Usage(len(prompt_ids), 0) if common.stream_options.continuous_usage_stats else None)
        stream = engine.submit(prompt_ids, params)
        events = _sse_events(engine, stream, params, common, shaper, prelude, len(prompt_ids))
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    stream = engine.submit(prompt_ids, params)
    watcher = asyncio.create_task(_cancel_on_disconnect(request, stream))
    try:
        result = await collect(text_deltas(stream, engine.tokenizer, params))
    except GenerationFailed as exc:
        return JSONResponse(error_body(str(exc), "server_error", None, 500), status_code=500)
    finally:
        watcher.cancel()
        stream.cancel()
    usage = Usage.of(len(prompt_ids), result.n_tokens, result.prediction, result.cached_tokens)
    return JSONResponse(shaper.response(result, usage, common.top_logprobs is not None))


async def _sse_events(engine: ServingEngine, stream: EngineStream, params: SamplingParams, common: Common,
                      shaper: Shaper, prelude: list[dict], prompt_len: int) -> AsyncIterator[str]:
    continuous = common.stream_options.continuous_usage_stats
    n_tokens = 0
    prediction = None
    cached = None
    try:
        for chunk in prelude:
            yield _sse(chunk)
        async for delta in text_deltas(stream, engine.tokenizer, params):
            n_tokens += len(delta.token_ids)
            prediction = delta.prediction or prediction
            cached = delta.cached_tokens if delta.cached_tokens is not None else cached
            usage = Usage.of(prompt_len, n_tokens, prediction, cached) if continuous else None
            yield _sse(shaper.chunk(delta, usage))
        if common.stream_options.include_usage:
            yield _sse(shaper.usage_chunk(Usage.of(prompt_len, n_tokens, prediction, cached)))
        yield "data: [DONE]\n\n"
    except GenerationFailed as exc:
        yield _sse(error_body(str(exc), "server_error", None, 500))
    finally:
        stream.cancel()  # the client went away (the task is cancelled) or the stream is over


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _cancel_on_disconnect(request: Request, stream: EngineStream) -> None:
    """Non-streaming requests: cancel the generation when the client hangs up (the task is
    cancelled by the caller once the result is in)."""
    while True:
        if await request.is_disconnected():
            log.info("client disconnected: cancelling its generation")
            stream.cancel()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 (malformed JSON or wrong types) becomes OpenAI's 400.
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param + ': ' if param else ''}{first.get('msg', 'invalid request')}"
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{exc.detail}: {request.method} {request.url.path}"
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(message, kind, None, exc.status_code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body(f"{type(exc).__name__}: {exc}", "server_error", None, 500), status_code=500)
