"""The OpenAI-compatible server layer, engine-agnostic: see NOTE.md."""

from .app import ServerInfo, create_app
from skills.engine_api import (EngineStream, GenerationFailed, SamplingParams, ServingEngine, TokenLogprob,
                         TokenOutput)
from .serve import serve
from skills.engine_api.stream import QueueStream

__all__ = ["EngineStream", "GenerationFailed", "QueueStream", "SamplingParams", "ServerInfo", "ServingEngine",
           "TokenLogprob", "TokenOutput", "create_app", "serve"]
