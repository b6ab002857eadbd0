"""Run a transcriber behind the ASR app with uvicorn until the process is stopped."""
from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .engine_api import StreamingTranscriber

log = logging.getLogger(__name__)


def serve(engine: StreamingTranscriber, name: str, host: str, port: int) -> None:
    log.info("serving %s (streaming ASR) on http://%s:%d", name, host, port)
    uvicorn.run(create_app(engine, name), host=host, port=port, log_level="info", access_log=False)
