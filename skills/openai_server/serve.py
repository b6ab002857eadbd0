"""Run an engine behind the OpenAI app with uvicorn until the process is stopped."""

from __future__ import annotations

import gc
import logging

import uvicorn

from .app import ServerInfo, create_app
from skills.engine_api import ServingEngine

log = logging.getLogger(__name__)


def serve(engine: ServingEngine, info: ServerInfo, host: str, port: int) -> None:
    log.info("serving %s (%s) on http://%s:%d", info.served_model_name, info.server_name, host, port)
    app = create_app(engine, info)
    # What is loaded now (torch, transformers, the model's modules: millions of objects) lives as long
    # as the server: moved out of the collector's sight, so the first full collection a burst of
    # requests triggers does not scan it all with the GIL held (a ~200 ms stall of the engine's step).
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    finally:
        engine.shutdown()
