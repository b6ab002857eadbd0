"""The serving engine core: Llama-family runner, slot state pool, continuous batching. See NOTE.md.

The names below load on first use, so `skills.engine_core.stack_main` can parse a stack's flags
(and set OpenMP's environment) before torch is imported.
"""

__all__ = ["EngineConfig", "LLMEngine", "load_engine"]


def __getattr__(name: str):
    if name in ("EngineConfig", "LLMEngine"):
        from . import engine

        return getattr(engine, name)
    if name == "load_engine":
        from .loader import load_engine

        return load_engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
