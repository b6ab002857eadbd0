"""An engine loaded, warmed up and stepped on one thread of its own.

OpenMP keeps a thread team per thread that runs parallel work. Loading on the main thread and
stepping on another left two teams, and the idle one slowed every bandwidth-bound kernel of the
other: a 9-row forward of SmolLM2-135M took 16 ms on the loading thread and 23 ms on a second one
(setting B served at 184 tok/s against 260 in-process).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TypeVar

E = TypeVar("E")  # an engine with a `_thread` attribute and a `_loop()` method


def start_on_own_thread(build: Callable[[], E]) -> E:
    """Build the engine on a new thread, then run its loop there; returns it once built (a build
    error is raised here)."""
    built: queue.SimpleQueue = queue.SimpleQueue()

    def run() -> None:
        try:
            engine = build()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            built.put(exc)
            return
        engine._thread = threading.current_thread()
        built.put(engine)
        engine._loop()

    threading.Thread(target=run, name="engine", daemon=True).start()
    result = built.get()
    if isinstance(result, BaseException):
        raise result
    return result


class OwnThread:
    """The lifecycle of an engine whose `_loop()` runs on a thread of its own, woken through
    `_inbox` (a queue; None wakes it) and stopped by `_stopping` (a threading.Event)."""

    _thread: threading.Thread | None = None
    _thread_name = "engine"

    @classmethod
    def start_on_own_thread(cls, build: Callable[[], E]) -> E:
        """Build (load, warm up) and run the engine on one new thread (this module says why)."""
        return start_on_own_thread(build)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._thread_name, daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stopping.set()
        self._inbox.put(None)  # wakes the loop
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
