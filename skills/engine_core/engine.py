"""The engine: schedule -> run -> postprocess, in one background thread.

`submit` (event loop) and `add_request` (any thread) hand requests over through a queue;
outputs go back through each request's sink. Implements the server layer's `ServingEngine`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

import torch

from skills.engine_api import (
    GenerationFailed,
    PredictionUsage,
    SamplingParams,
    TokenLogprob,
    TokenOutput,
    check_fits,
)
from skills.engine_api.stream import QueueStream
from skills.speculative_decoding.speculator import accept_greedy

from .counters import Counters, StepLogger
from .engine_thread import OwnThread
from .runner import ModelRunner, StepResult
from .scheduler import ScheduledStep, Scheduler, SchedulerConfig
from .sequence import Sequence, Sink

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5
IDLE_GATHER_CAP = 10  # the most an idle engine waits for a burst, in idle_gather_s


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 256
    max_model_len: int = 4096
    dtype: str = "bfloat16"  # bfloat16 | float32
    threads: int | None = None  # torch intra-op threads; None: every core
    compile: tuple[str, ...] = ()  # kernels.py names to torch.compile, e.g. ("decode_attention",)
    pack_weights: bool = True  # prepack matmul weights for oneDNN (CPU; see packing.py)
    # The matmul of decode and verify steps, with the native kernels: small_gemm | onednn | auto
    # (row_invariance.py: oneDNN only where it is row-invariant on this CPU; auto: the faster).
    few_row_matmul: str = "small_gemm"
    # Where that is small_gemm, steps of more rows than this take oneDNN. None: all small_gemm takes
    # (32 rows). "auto" (row_invariance.small_gemm_rows): 8 on a CPU with AMX where small_gemm runs
    # without it (its AVX-512 loop), else None. Rows then
    # round by their step's size, so a speculating engine keeps None (its verify check would fail).
    small_gemm_rows: int | str | None = None
    # Before the next step, wait (at most this long) until the event loop has handed this step's
    # outputs to their streams, so its burst of Python does not preempt an OpenMP thread mid-matmul.
    output_sync_s: float = 0.0
    # An idle engine that receives a request waits until none has followed for this long (at most
    # IDLE_GATHER_CAP times it) before its first step, so a burst arriving over a few ms of HTTP
    # parsing is prefilled in one step, not a lone first request and then the rest behind it.
    idle_gather_s: float = 0.0
    # Outputs handed to the server this many at a time after a request's first (QueueStream's
    # interval): fewer wake-ups of the event loop and fewer chunks, on the cores the engine steps on.
    stream_interval: int = 1
    # Greedy steps of <= 4 rows asking no logprobs take their tokens from the head's int8 screen
    # (packing.PackedHead.greedy_ids: the same tokens, half the head's bytes read).
    greedy_screen: bool = True

    def __post_init__(self) -> None:
        if self.stream_interval < 1:
            raise ValueError("stream_interval must be positive")
        if not (self.small_gemm_rows in (None, "auto") or (isinstance(self.small_gemm_rows, int)
                                                         and self.small_gemm_rows >= 0)):
            raise ValueError(f"small_gemm_rows: a row count, auto or None, not {self.small_gemm_rows!r}")

    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(self.max_num_seqs, self.max_num_batched_tokens, self.max_model_len)


class LLMEngine(OwnThread):
    """`speculator`: drafts tokens per request (skills/speculative_decoding's `Speculator`, or
    anything with `start(prompt_ids, params) -> drafter | None`, the drafter having
    `propose(output_ids, limit) -> Draft` and `update(output_ids, draft, accepted, emitted)`);
    None: one token per step."""

    def __init__(self, runner: ModelRunner, tokenizer, eos_ids: frozenset[int], cfg: EngineConfig,
                 speculator=None) -> None:
        self.runner = runner
        self.speculator = speculator
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.cfg = cfg
        self.max_model_len = cfg.max_model_len
        self.vocab_size = runner.model.cfg.vocab_size
        self.scheduler = Scheduler(cfg.scheduler())
        self.counters = Counters()
        self.runtime: dict = {}  # what the loader chose on this machine (kernels, checks), for /v1/models
        self._inbox: queue.SimpleQueue[Sequence] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None  # the event loop submit() streams to
        self._threads = torch.get_num_threads()

    # --- any thread ---

    def add_request(self, prompt_ids: list[int], params: SamplingParams, sink: Sink,
                    is_cancelled=lambda: False) -> Sequence:
        """Raises ValueError for a request that cannot run (checked here, not in the engine thread)."""
        check_fits(prompt_ids, params, self.max_model_len)
        seq = Sequence(list(prompt_ids), params, sink, is_cancelled)
        if self.speculator is not None:
            seq.drafter = self.speculator.start(seq.prompt_ids, params)
        self.counters.add(requests_total=1, prompt_tokens_total=len(prompt_ids))
        self._inbox.put(seq)
        return seq

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> QueueStream:
        """From the event loop: a stream of this request's outputs."""
        stream = QueueStream.on_running_loop(self.cfg.stream_interval)
        self._event_loop = stream.loop
        self.add_request(prompt_ids, params, stream.send_many, stream.cancelled.is_set)
        return stream

    def metrics(self) -> dict[str, int]:
        running, waiting = len(self.scheduler.slots), len(self.scheduler.waiting) + self._inbox.qsize()
        return {**self.counters.snapshot(), "requests_running": running, "requests_waiting": waiting}

    def reset_prefix_cache(self) -> bool:
        return True  # no prefix cache here

    # --- the engine thread (or a test calling step() directly) ---

    def step(self, block: bool = False) -> bool:
        """One iteration; returns whether a forward ran."""
        self._drain_inbox(block and not self.scheduler.has_work())
        self._reap_cancelled()
        self._propose()
        step = self.scheduler.schedule()
        if step is None:
            return False
        result = self.runner.run(step)
        self._postprocess(step, result)
        if self.cfg.output_sync_s > 0 and self._event_loop is not None and self._thread is not None:
            self._wait_for_event_loop()
        return True

    def _wait_for_event_loop(self) -> None:
        """Outputs went out with call_soon_threadsafe; a callback queued behind them, which
        re-queues itself once, runs after the streams' consumers have taken their items."""
        done = threading.Event()
        try:
            self._event_loop.call_soon_threadsafe(self._event_loop.call_soon, done.set)
        except RuntimeError:  # the loop is closed
            return
        done.wait(self.cfg.output_sync_s)

    def warmup(self, batch: int = 8, prompt_len: int = 16, tokens: int = 4) -> None:
        """Run dummy requests before serving, so lazy work (torch.compile of each kind of step,
        oneDNN primitives) happens now and not inside the first real requests: half of them join
        while the others decode, so mixed steps (decodes + prefill chunks) are covered too."""
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        n = min(batch, self.cfg.max_num_seqs)
        for i in range(n):
            self.add_request([1 + (i + j) % (self.vocab_size - 1) for j in range(prompt_len)], params,
                             lambda outs: None)
            if i == n // 2:
                self.step()
                self.step()
        self.run_until_idle()
        if self.speculator is not None:  # verify chunks: a prediction holding every token always matches
            guess = SamplingParams(max_tokens=2 * tokens, temperature=0.0, ignore_eos=True,
                                   prediction=tuple(range(self.vocab_size)))
            self.add_request([1 + j % (self.vocab_size - 1) for j in range(prompt_len)], guess, lambda outs: None)
            self.run_until_idle()
        self.counters = Counters()

    def run_until_idle(self) -> None:
        while self.step() or self.scheduler.has_work() or not self._inbox.empty():
            pass

    def _loop(self) -> None:
        # OpenMP settings are per calling thread: give this thread the team size set at load.
        torch.set_num_threads(self._threads)
        stats = StepLogger(self.counters.snapshot())
        while not self._stopping.is_set():
            try:
                started = time.perf_counter()
                if self.step(block=True):
                    stats.add(time.perf_counter() - started, self.counters.snapshot())
            except Exception as exc:  # the failure goes to every request in flight; the engine keeps serving
                log.exception("engine step failed")
                self._fail_all(GenerationFailed(f"{type(exc).__name__}: {exc}"))

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        gap = self.cfg.idle_gather_s if block else 0.0
        deadline = time.perf_counter() + gap * IDLE_GATHER_CAP
        while True:
            if item is not None:
                self.scheduler.add(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                wait = min(gap, deadline - time.perf_counter())
                if wait <= 0:
                    return
                try:
                    item = self._inbox.get(timeout=wait)
                except queue.Empty:
                    return

    def _reap_cancelled(self) -> None:
        for seq in [*self.scheduler.waiting, *self.scheduler.slots]:
            if seq.is_cancelled():
                self._finish(seq, "abort", TokenOutput(None, None, "abort"))

    def _propose(self) -> None:
        """Drafts for this step's decoding sequences (those with a drafter), cut so that a fully
        accepted draft plus its bonus token never passes max_tokens or the context length, and so
        that a step has no more rows than the load-time check verified (runner.verified_rows)."""
        budget = None
        if self.runner.verified_rows:  # every decoding sequence takes one row; drafts share the rest
            budget = self.runner.verified_rows - sum(1 for s in self.scheduler.slots if not s.prefilling)
        for seq in self.scheduler.slots:
            if seq.drafter is None or seq.prefilling:
                continue
            limit = min(seq.params.max_tokens - len(seq.output_ids), self.max_model_len - seq.num_tokens) - 1
            if budget is not None:
                limit = min(limit, budget)
            draft = seq.drafter.propose(seq.output_ids, limit)
            if budget is not None:
                budget -= len(draft.tokens)
            if getattr(self.speculator, "verify_rows", None) and not self.runner.row_count_invariant():
                # Every step is a verify chunk of at least 2 rows, drafted or not (an empty draft
                # gets one filler token, verified like any draft), so each token takes the same
                # numeric path whatever was drafted around it: oneDNN's bf16 matmul rounds a 1-row
                # product differently from the same row among 2 or more. (With the native row
                # attention and small_gemm a row's numbers never depend on the row count.)
                if not draft.tokens:
                    draft = type(draft)([seq.last_token], "")
                seq.draft = draft
            else:
                seq.draft = draft if draft.tokens else None

    def _postprocess(self, step: ScheduledStep, result: StepResult) -> None:
        for seq in step.decodes:
            seq.num_computed += 1
        for seq, n in step.prefills:
            seq.num_computed += n
        rows = sum(s.draft_len for s in step.verifies)
        drafted = sum(s.draft.proposed for s in step.verifies)
        self.counters.record_step(len(step.decodes) + len(step.verifies), len(step.prefills),
                                  sum(n for _, n in step.prefills), rows)
        verified = []
        for seq, token_ids, logprobs in result.verified:
            draft, seq.draft = seq.draft, None
            accepted = accept_greedy(draft.tokens, token_ids)
            # The last token and the accepted drafts now have their K/V in the pool; the token
            # after them (the model's own) is the new last token, computed next step.
            seq.num_computed += 1 + accepted
            verified.append((seq, token_ids, logprobs, draft, accepted))
        # Only now emit: a request finishing here moves the last slot's sequence into its slot
        # (scheduler.finish), copying that sequence's first num_computed positions, which must
        # already count what this step computed for it.
        for seq, token_id, logprobs in zip(result.sampled, result.token_ids, result.logprobs):
            self._emit(seq, [token_id], [logprobs])
        accepted_total = prediction_total = 0
        for seq, token_ids, logprobs, draft, accepted in verified:
            emitted = self._emit(seq, token_ids[: accepted + 1], logprobs[: accepted + 1], draft, accepted)
            used = min(accepted, emitted, draft.proposed)
            accepted_total += used
            prediction_total += used if draft.source == "prediction" else 0
        if step.verifies:
            self.counters.add(spec_steps=len(step.verifies), spec_proposed_tokens=drafted,
                              spec_accepted_tokens=accepted_total, spec_prediction_accepted_tokens=prediction_total)

    def _emit(self, seq: Sequence, token_ids: list[int], logprobs: list[TokenLogprob | None], draft=None,
              accepted: int = 0) -> int:
        """Append a step's tokens to seq one by one, stopping exactly where one-token decoding would
        (EOS unless ignore_eos, max_tokens, context length); returns how many were appended."""
        params = seq.params
        outs: list[TokenOutput] = []
        finish: str | None = None
        for token_id, lp in zip(token_ids, logprobs):
            if token_id in self.eos_ids and not params.ignore_eos:
                finish = "stop"
                break
            seq.output_ids.append(token_id)
            if len(seq.output_ids) >= params.max_tokens or seq.num_tokens >= self.max_model_len:
                finish = "length"
                outs.append(TokenOutput(token_id, lp, "length"))
                break
            outs.append(TokenOutput(token_id, lp, None))
        emitted = len(outs)
        self.counters.add(generation_tokens_total=emitted)
        if draft is not None and seq.drafter is not None:
            seq.drafter.update(seq.output_ids, draft, accepted, emitted)
        usage = self._prediction_usage(seq)
        if usage is not None:
            outs = [TokenOutput(o.token_id, o.logprobs, o.finish_reason, usage) for o in outs]
        if finish is None:
            seq.sink(outs)
        elif finish == "stop":
            self._finish(seq, "stop", TokenOutput(None, None, "stop", usage), outs)
        else:
            self._finish(seq, "length", outs[-1], outs[:-1])
        return emitted

    @staticmethod
    def _prediction_usage(seq: Sequence) -> PredictionUsage | None:
        drafter = seq.drafter
        if drafter is None or getattr(drafter, "prediction", None) is None:
            return None
        return PredictionUsage(drafter.accepted_prediction, drafter.rejected_prediction)

    def _finish(self, seq: Sequence, reason: str, last: TokenOutput | GenerationFailed,
                before: list[TokenOutput] = ()) -> None:
        self.runner.apply(self.scheduler.finish(seq, reason))
        self.counters.add(requests_finished=1)
        seq.sink([*before, last])

    def _fail_all(self, error: GenerationFailed) -> None:
        for seq in [*self.scheduler.waiting, *self.scheduler.slots]:
            self._finish(seq, "abort", error)

