"""The engine loop: drain inbox -> reap cancelled -> schedule -> forward -> postprocess, on one thread.

Implements the server layer's `ServingEngine` (skills/engine_api); every output
carries the request's `cached_tokens` (prompt tokens restored from the prefix cache).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from skills.engine_core.counters import Counters, StepLogger
from skills.engine_core.engine_thread import OwnThread
from skills.engine_api import GenerationFailed, SamplingParams, TokenLogprob, TokenOutput, check_fits
from skills.engine_api.stream import QueueStream

from .config import EngineConfig
from .reuse import PrefixReuse
from .runner import Runner
from .scheduler import ScheduledStep, Scheduler
from .sequence import HybridSequence
from .sharing import assign_sources

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.5


@dataclass
class HybridCounters(Counters):
    prefix_cache_query_tokens: int = 0  # prompt tokens looked up in the prefix cache


class HybridEngine(OwnThread):
    def __init__(self, runner: Runner, reuse: PrefixReuse, tokenizer, eos_ids: frozenset[int], cfg: EngineConfig,
                 max_model_len: int) -> None:
        self.runner = runner
        self.reuse = reuse
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.cfg = cfg
        self.max_model_len = max_model_len
        self.vocab_size = runner.cfg.vocab_size
        self.scheduler = Scheduler(cfg.max_num_seqs, cfg.max_num_batched_tokens, self._admit)
        self.counters = HybridCounters()
        self.runtime: dict = {}  # what the loader chose on this machine, for /v1/models
        self._inbox: queue.SimpleQueue[HybridSequence | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # one step, or a cache reset, at a time
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._threads = torch.get_num_threads()
        self.last_step: ScheduledStep | None = None  # the step the last forward ran (bench.py reads it)

    # --- any thread ---

    def add_request(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[list[TokenOutput]], None],
                    is_cancelled: Callable[[], bool] = lambda: False) -> HybridSequence:
        """Raises ValueError for a request that cannot run."""
        check_fits(prompt_ids, params, self.max_model_len)
        seq = HybridSequence(list(prompt_ids), params, sink, is_cancelled)
        self.counters.add(requests_total=1, prompt_tokens_total=len(prompt_ids))
        self._inbox.put(seq)
        return seq

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> QueueStream:
        stream = QueueStream.on_running_loop(self.cfg.stream_interval)
        self.add_request(prompt_ids, params, stream.send_many, stream.cancelled.is_set)
        return stream

    def metrics(self) -> dict[str, int]:
        running = len(self.scheduler.running)
        waiting = len(self.scheduler.waiting) + self._inbox.qsize()
        return {**self.counters.snapshot(), **self.reuse.metrics(), "requests_running": running,
                "requests_waiting": waiting}

    def reset_prefix_cache(self) -> bool:
        with self._lock:
            return self.reuse.reset()

    # --- the engine thread (or a test calling step()) ---

    def step(self, block: bool = False) -> bool:
        """One iteration; returns whether a forward ran."""
        self._drain_inbox(block and not self.scheduler.has_work())
        with self._lock:
            self._reap_cancelled()
            step = self.scheduler.schedule()
            if step is None:
                return False
            if self.scheduler.changed and self.runner.share_prefix:
                assign_sources(self.scheduler.running)
                self.scheduler.changed = False
            result = self.runner.run(step)
            self._postprocess(step, result)
            self.last_step = step
        return True

    def run_until_idle(self) -> None:
        while self.step() or self.scheduler.has_work() or not self._inbox.empty():
            pass

    def warmup(self) -> None:
        """Every kind of step once before serving (decodes beside prompt chunks, a cache hit), then
        the cache and the counters start empty."""
        params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        prefix = [1 + (7 * j) % (self.vocab_size - 1) for j in range(3 * self.cfg.state_block)]
        for i in range(3):
            self.add_request(prefix + [100 + i] * (5 + i), params, lambda outs: None)
            self.step()
        self.run_until_idle()
        self.reuse.reset(counters=True)
        self.counters = HybridCounters()

    def _loop(self) -> None:
        torch.set_num_threads(self._threads)  # OpenMP settings are per thread
        stats = StepLogger(self.counters.snapshot())
        while not self._stopping.is_set():
            try:
                started = time.perf_counter()
                if self.step(block=True):
                    stats.add(time.perf_counter() - started, self.counters.snapshot())
            except Exception as exc:  # fails the requests in flight; the engine keeps serving
                log.exception("engine step failed")
                self._fail_all(GenerationFailed(f"{type(exc).__name__}: {exc}"))

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=IDLE_WAIT_S) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self.scheduler.add(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _admit(self, seq: HybridSequence, running: list[HybridSequence]) -> bool:
        if not self.reuse.admit(seq, running):
            return False
        if self.reuse.cache is not None:
            self.counters.add(prefix_cache_query_tokens=len(seq.prompt_ids), prefix_cache_hit_tokens=seq.cached_tokens)
        return True

    def _reap_cancelled(self) -> None:
        for seq in [*self.scheduler.waiting, *self.scheduler.running]:
            if seq.is_cancelled():
                self._finish(seq, "abort", [TokenOutput(None, None, "abort", cached_tokens=seq.cached_tokens)])

    def _postprocess(self, step: ScheduledStep, result) -> None:
        for seq in step.decodes:
            seq.num_computed += 1
        for chunk in step.prefills:
            chunk.seq.num_computed += chunk.length
            if not chunk.seq.prefilling:
                self.reuse.prompt_done(chunk.seq)
        self.counters.record_step(len(step.decodes), len(step.prefills), sum(c.length for c in step.prefills))
        for seq, token_id, logprobs in zip(result.sampled, result.token_ids, result.logprobs):
            self._emit(seq, token_id, logprobs)

    def _emit(self, seq: HybridSequence, token_id: int, logprobs: TokenLogprob | None) -> None:
        cached = seq.cached_tokens
        if token_id in self.eos_ids and not seq.params.ignore_eos:
            self._finish(seq, "stop", [TokenOutput(None, None, "stop", cached_tokens=cached)])
            return
        seq.output_ids.append(token_id)
        self.counters.add(generation_tokens_total=1)
        if len(seq.output_ids) >= seq.params.max_tokens or seq.num_tokens >= self.max_model_len:
            self._finish(seq, "length", [TokenOutput(token_id, logprobs, "length", cached_tokens=cached)])
        else:
            seq.sink([TokenOutput(token_id, logprobs, None, cached_tokens=cached)])

    def _finish(self, seq: HybridSequence, reason: str, outputs: list[TokenOutput | GenerationFailed]) -> None:
        self.scheduler.finish(seq, reason)
        self.reuse.release(seq)
        self.counters.add(requests_finished=1)
        seq.sink(outputs)

    def _fail_all(self, error: GenerationFailed) -> None:
        with self._lock:
            for seq in [*self.scheduler.waiting, *self.scheduler.running]:
                self._finish(seq, "abort", [error])
