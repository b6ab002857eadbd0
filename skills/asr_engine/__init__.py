"""A streaming speech-recognition engine for moonshine_streaming on CPU (skills/asr_server's
StreamingTranscriber): incremental encoding per stream (skills/encoder_cache), continuous batching
across streams, restarted decodes that verify the previous partial as a draft. See NOTE.md."""

from .config import EngineConfig
from .engine import AsrEngine
from .loader import load_engine, load_model

__all__ = ["AsrEngine", "EngineConfig", "load_engine", "load_model"]
