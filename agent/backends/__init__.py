"""Where the planner and the implementer run: an LLM endpoint, the Codex CLI, or the offline policy."""
from __future__ import annotations

from agent.backends.base import Backend, BackendError


def make_backend(name: str, **options) -> Backend:
    if name == "offline":
        from agent.backends.offline import OfflineBackend

        return OfflineBackend()
    if name == "openai":
        from agent.backends.openai_backend import OpenAIBackend

        return OpenAIBackend.from_env(**options)
    if name == "codex":
        from agent.backends.codex import CodexBackend

        return CodexBackend.from_env(**options)
    raise BackendError(f"unknown backend {name!r}: offline, openai or codex")
