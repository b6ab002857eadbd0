"""Run an engine behind the OpenAI app with uvicorn until the process is stopped."""

from __future__ import annotations

import logging

import uvicorn

from .app import ServerInfo, create_app
from skills.engine_api import ServingEngine

log = logging.getLogger(__name__)


def serve(engine: ServingEngine, info: ServerInfo, host: str, port: int) -> None:
    log.info("serving %s (%s) on http://%s:%d", info.served_model_name, info.server_name, host, port)
    try:
        uvicorn.run(create_app(engine, info), host=host, port=port, log_level="info", access_log=False)
    finally:
        engine.shutdown()
