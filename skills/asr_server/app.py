"""The FastAPI app over any `StreamingTranscriber`: the audio stream, offline transcription, /metrics."""
from __future__ import annotations

import itertools
import logging
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine_api import StreamingTranscriber
from .metrics import ServerStats, prometheus
from .protocol import ROUTE
from .session import StreamSession
from .wav import WavError, pcm16_samples

log = logging.getLogger(__name__)


def create_app(engine: StreamingTranscriber, name: str) -> FastAPI:
    app = FastAPI(title="asr-server", docs_url=None, redoc_url=None, openapi_url=None)
    stats = ServerStats()
    ids = itertools.count()
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model"}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(prometheus(engine.counters(), stats), media_type="text/plain; version=0.0.4")

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        async with request.form() as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return _error("file: a WAV file is required (multipart/form-data field `file`)", 400, "file")
            data = await upload.read()
        try:
            samples = pcm16_samples(data)
        except WavError as exc:
            return _error(str(exc), 400, "file")
        try:
            text = await engine.transcribe(samples)
        except Exception as exc:  # the engine's failure, reported as OpenAI reports server errors
            log.exception("transcription failed")
            return _error(f"the engine failed: {type(exc).__name__}: {exc}", 500, None, "server_error")
        return {"text": text}

    @app.websocket(ROUTE)
    async def audio_stream(ws: WebSocket) -> None:
        await ws.accept()
        await StreamSession(ws, engine, stats, f"ws-{next(ids)}").run()

    return app


def _error(message: str, status: int, param: str | None, kind: str = "invalid_request_error") -> JSONResponse:
    """OpenAI's error body, as skills/openai_server answers."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(f"{exc.detail}: {request.method} {request.url.path}", exc.status_code, None, kind)
