"""The generate worker: one `model.generate` at a time on a single thread, FIFO.

Tokens reach the asyncio side one by one: a `BaseStreamer` receives each new token id in
the worker thread and hands a `TokenOutput` (id, logprobs, finish reason) to the request's
`QueueStream`. Text and stop strings are done by the shared server layer
(skills/openai_server), which cancels the stream when a stop string appears.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from skills.engine_api import GenerationFailed, SamplingParams, TokenLogprob, TokenOutput
from skills.engine_api.stream import QueueStream

from .grammar import GrammarMask, grammar_of
from .loader import LoadedModel

log = logging.getLogger(__name__)

Sampling = SamplingParams  # the name this module used before the server layer moved to skills/


@dataclass
class Counters:
    """The `/metrics` counters; updated from both the event loop and the worker thread."""

    forward_passes: int = 0
    requests_total: int = 0
    requests_running: int = 0
    requests_waiting: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@dataclass
class Job:
    """A request handed to the worker; the asyncio side iterates `stream`."""

    prompt_ids: list[int]
    sampling: SamplingParams
    stream: QueueStream

    @property
    def cancelled(self) -> threading.Event:
        return self.stream.cancelled

    def cancel(self) -> None:
        self.stream.cancel()

    def send(self, item: TokenOutput | GenerationFailed) -> None:
        """Called from the worker thread."""
        self.stream.send(item)
class LogprobRecorder(LogitsProcessor):
    """Keeps the log-softmax of the current step's raw scores; leaves the scores unchanged.

    `generate` appends custom processors before the sampling warpers, so these are the
    model's logprobs before temperature / top-p, as vLLM reports them by default.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.current: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.current = torch.log_softmax(scores[0].float(), dim=-1)
        return scores

    def entry(self, token_id: int) -> TokenLogprob:
        assert self.current is not None, "a token arrived before its scores"
        values, ids = torch.topk(self.current, self.k) if self.k else (torch.empty(0), torch.empty(0))
        # under a grammar fewer than k tokens may be allowed: the others are at -inf, not listed
        top = tuple((int(i), float(v)) for i, v in zip(ids, values) if v != float("-inf"))
        return TokenLogprob(token_id, float(self.current[token_id]), top)


class StopWhen(StoppingCriteria):
    """Ends `generate` at the next step once `should_stop()` is true (stop string, cancel)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool)


class TokenStreamer(BaseStreamer):
    """Forwards generated token ids; `generate` first puts the prompt, which is skipped."""

    def __init__(self, on_token: Callable[[int], None]) -> None:
        self.on_token = on_token
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self.on_token(int(token_id))

    def end(self) -> None:
        pass


class OutputTracker:
    """Per-request output state in the worker: token count and finish reason."""

    def __init__(self, job: Job, eos_ids: frozenset[int], counters: Counters,
                 recorder: LogprobRecorder | None) -> None:
        self.job = job
        self.sampling = job.sampling
        self.eos_ids = frozenset() if job.sampling.ignore_eos else eos_ids
        self.counters = counters
        self.recorder = recorder
        self.n_tokens = 0
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def on_token(self, token_id: int) -> None:
        if self.finished:
            return  # a step that ran before the stopping criteria saw the stop
        if token_id in self.eos_ids:
            self.finish("stop")
            return
        logprobs = self.recorder.entry(token_id) if self.recorder else None
        self.n_tokens += 1
        self.counters.add(generation_tokens_total=1)
        if self.n_tokens >= self.sampling.max_tokens:
            self.finish_reason = "length"
        self.job.send(TokenOutput(token_id, logprobs, self.finish_reason))

    def finish(self, reason: str) -> None:
        """End without a new token (EOS, cancel, or generate stopped on its own)."""
        if not self.finished:
            self.finish_reason = reason
            self.job.send(TokenOutput(None, None, reason))


class Generator:
    def __init__(self, loaded: LoadedModel) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos_ids = loaded.eos_ids
        self.pad_id = loaded.pad_id
        self.max_model_len = loaded.max_model_len
        self.vocab_size = loaded.vocab_size
        self.counters = Counters()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._current: Job | None = None
        self._ll = None
        self.model.register_forward_pre_hook(self._count_forward)

    def _count_forward(self, module: torch.nn.Module, args: tuple) -> None:
        self.counters.add(forward_passes=1)

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> QueueStream:
        """Queue a request (call from the event loop); it starts when those before it are done."""
        job = Job(prompt_ids, params, QueueStream.on_running_loop())
        self.counters.add(requests_total=1, requests_waiting=1)
        self._executor.submit(self._run, job)
        return job.stream

    def metrics(self) -> dict[str, int]:
        return self.counters.snapshot()

    def reset_prefix_cache(self) -> bool:
        return True  # there is no prefix cache to reset

    def check_response_format(self, fmt: dict) -> None:
        """Whether a response_format's schema compiles (ValueError, said to the client, if not)."""
        grammar_of(fmt)

    def _ll_tokenizer(self):
        """llguidance's view of the tokenizer, built on the first constrained request (seconds)."""
        if self._ll is None:
            from llguidance.hf import from_tokenizer

            self._ll = from_tokenizer(self.tokenizer, eos_token=sorted(self.eos_ids) or None)
        return self._ll

    def shutdown(self) -> None:
        """Drop queued jobs and stop the running one, so the process can exit promptly."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._current is not None:
            self._current.cancel()

    # --- worker thread ---

    def _run(self, job: Job) -> None:
        if job.cancelled.is_set():
            self.counters.add(requests_waiting=-1)
            job.send(TokenOutput(None, None, "abort"))
            return
        self.counters.add(requests_waiting=-1, requests_running=1, prompt_tokens_total=len(job.prompt_ids))
        started = time.perf_counter()
        self._current = job
        try:
            tracker = self._generate(job)
            log.info("request done: %d prompt + %d generated tokens, %s, %.2fs",
                     len(job.prompt_ids), tracker.n_tokens, tracker.finish_reason,
                     time.perf_counter() - started)
        except Exception as exc:  # reported to the client, the worker keeps serving
            log.exception("generate failed")
            job.send(GenerationFailed(f"{type(exc).__name__}: {exc}"))
        finally:
            self._current = None
            self.counters.add(requests_running=-1)

    def _generate(self, job: Job) -> OutputTracker:
        sampling = job.sampling
        recorder = LogprobRecorder(sampling.top_logprobs) if sampling.top_logprobs is not None else None
        tracker = OutputTracker(job, self.eos_ids, self.counters, recorder)
        input_ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=self.model.device)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=self._generation_config(sampling),
            streamer=TokenStreamer(tracker.on_token),
            logits_processor=LogitsProcessorList(self._processors(sampling, recorder)),
            stopping_criteria=StoppingCriteriaList(
                [StopWhen(lambda: tracker.finished or job.cancelled.is_set())]
            ),
        )
        tracker.finish(_end_reason(tracker, job))
        return tracker

    def _processors(self, sampling: SamplingParams, recorder: LogprobRecorder | None) -> list[LogitsProcessor]:
        """The grammar's mask first, so the logprobs recorded are those of the masked distribution
        the token was chosen from (the harness's constrained reference reports them so too)."""
        mask = [GrammarMask(self._ll_tokenizer(), sampling.response_format)] if sampling.response_format else []
        return mask + ([recorder] if recorder else [])

    def _generation_config(self, sampling: SamplingParams) -> GenerationConfig:
        # ignore_eos as vLLM does it: EOS is not masked, it just does not end generation.
        eos = [] if sampling.ignore_eos else sorted(self.eos_ids)
        common = dict(max_new_tokens=sampling.max_tokens, eos_token_id=eos, pad_token_id=self.pad_id)
        if sampling.greedy:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, **common
        )


def _end_reason(tracker: OutputTracker, job: Job) -> str:
    """Why `generate` returned when the tracker had not already decided (EOS and stop strings are decided as they arrive)."""
    if tracker.n_tokens >= job.sampling.max_tokens:
        return "length"
    return "abort" if job.cancelled.is_set() else "stop"
