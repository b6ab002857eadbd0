"""The scaffold of an engine that serves one request at a time on one worker thread.

Greedy requests are queued FIFO on a single-thread executor; the subclass writes `_generate`
(prefill, decode, send `TokenOutput`s to the request's stream) and keeps its `/metrics` counters
with `_count`. The event loop never runs model code, the worker never blocks the loop, and a
failure mid-request is sent to that client while the worker goes on serving.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from skills.engine_api import GenerationFailed, SamplingParams
from .protocol import RequestError
from skills.engine_api.stream import QueueStream


class SerialEngine:
    """A `ServingEngine`'s request plumbing; subclasses set tokenizer, vocab_size, max_model_len."""

    def __init__(self, counters: tuple[str, ...], thread_name: str, log: logging.Logger) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(("requests_total", "prompt_tokens_total", *counters), 0)
        self._current: QueueStream | None = None
        self._log = log

    # --- ServingEngine, called from the event loop ---

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> QueueStream:
        if not params.greedy:
            raise RequestError("this engine decodes greedily only: temperature must be 0", "temperature")
        stream = QueueStream.on_running_loop()
        self._count(requests_total=1, prompt_tokens_total=len(prompt_ids))
        self._executor.submit(self._run, list(prompt_ids), params, stream)
        return stream

    def metrics(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def shutdown(self) -> None:
        """Drop queued requests and stop the running one, so the process can exit promptly."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._current is not None:
            self._current.cancel()

    # --- both threads ---

    def _count(self, **deltas: float) -> None:
        with self._lock:
            for name, value in deltas.items():
                self._counters[name] += int(value)

    # --- worker thread ---

    def _run(self, prompt: list[int], params: SamplingParams, stream: QueueStream) -> None:
        self._current = stream
        started = time.perf_counter()
        try:
            done = self._generate(prompt, params, stream)
            self._log.info("request: %d prompt tokens, %s, %.2fs", len(prompt), done, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 (any failure: the client gets a 500, the worker keeps serving)
            self._log.exception("generation failed")
            stream.send(GenerationFailed(f"{type(exc).__name__}: {exc}"))
        finally:
            self._current = None

    def _generate(self, prompt: list[int], params: SamplingParams, stream: QueueStream) -> str:
        """Serve one request to its end; what to log about it (e.g. "58 generated, stop")."""
        raise NotImplementedError
