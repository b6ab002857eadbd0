"""The streaming speech-recognition server layer, engine-agnostic: see NOTE.md."""

from .app import create_app
from .engine_api import SAMPLE_RATE, StreamingTranscriber
from .serve import serve

__all__ = ["SAMPLE_RATE", "StreamingTranscriber", "create_app", "serve"]
