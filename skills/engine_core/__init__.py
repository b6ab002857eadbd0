"""The serving engine core: Llama-family runner, slot state pool, continuous batching. See NOTE.md."""

from .engine import EngineConfig, LLMEngine
from .loader import load_engine

__all__ = ["EngineConfig", "LLMEngine", "load_engine"]
