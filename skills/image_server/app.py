"""The FastAPI app over any `ImageEngine`: image generation, /metrics, /health, /v1/models.

Requests run one at a time on one worker thread (the engine owns the cores); a queue of them waits
on the event loop, so /health and /metrics answer while an image is drawn. `serve` builds the
engine on that same thread: torch's OpenMP team belongs to the thread that starts it, and a
second one (loading and compiling on the main thread, drawing on the worker) contends for the same
cores (engine-f on 2 cores: 480-600 ms an image against 320 ms with everything on one thread)."""
from __future__ import annotations

import asyncio
import base64
import io
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from .engine_api import ImageEngine
from .protocol import ROUTE, RequestError, parse, read_json

log = logging.getLogger(__name__)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _error(message: str, status: int, param: str | None, kind: str = "invalid_request_error") -> JSONResponse:
    # A message may quote what the client sent, and JSON's "\ud800" is a lone surrogate that UTF-8
    # cannot encode: it is escaped here, or the 4xx would become a 500 while rendering.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def engine_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-engine")


def create_app(engine: ImageEngine, name: str, worker: ThreadPoolExecutor | None = None) -> FastAPI:
    """`worker`: the one thread the engine draws on (the one it was built on, see `serve`)."""
    app = FastAPI(title="image-server", docs_url=None, redoc_url=None, openapi_url=None)
    worker = worker or engine_thread()
    served = {"images_total": 0, "image_requests_refused_total": 0, "image_failures_total": 0}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "image_size": engine.image_size}]}

    @app.get("/metrics")
    async def metrics() -> dict:
        return {**engine.counters(), **served}

    @app.post(ROUTE)
    async def generations(request: Request):
        try:
            params = parse(read_json(await request.body()), engine.image_size)
        except RequestError as exc:
            served["image_requests_refused_total"] += 1
            return _error(str(exc), 400, exc.param)
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        ids = engine.tokenize(params.prompt)
        try:
            image = await asyncio.get_running_loop().run_in_executor(
                worker, engine.generate, ids, seed, params.steps, params.guidance)
        except Exception as exc:  # the engine's failure, reported as OpenAI reports server errors
            served["image_failures_total"] += 1
            log.exception("generation failed")
            return _error(f"the engine failed: {type(exc).__name__}: {exc}", 500, None, "server_error")
        served["images_total"] += 1
        return {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(png(image)).decode(), "seed": seed}]}

    return app


def serve(make_engine: Callable[[], ImageEngine], name: str, host: str, port: int) -> None:
    """Build the engine on its worker thread, then serve it from there."""
    import uvicorn

    worker = engine_thread()
    engine = worker.submit(make_engine).result()
    uvicorn.run(create_app(engine, name, worker), host=host, port=port, log_level="warning")
