"""The interface between a serving engine and the server layer in front of it (skills/openai_server).

An engine takes prompt token ids plus sampling parameters and streams back token-level
outputs (id, logprobs, finish reason). Text, stop strings and response shapes are the
server's job, so every engine (the generate-based reference, the batching engine, ...)
shares them. Engines import this, never the server: it pulls in no web framework.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks of generation, already validated."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # applied by the server (detokenizer); engines may ignore it
    ignore_eos: bool = False
    top_logprobs: int | None = None  # None: no logprobs; k: the chosen token plus the top k
    # The predicted output (OpenAI's `prediction`), tokenized without special tokens; an engine
    # may draft from it (speculative decoding) or ignore it. It never changes what is generated.
    prediction: tuple[int, ...] | None = None
    # OpenAI's response_format (json_schema / json_object): the output must follow its grammar. Only
    # an engine with `check_response_format` gets one; the server refuses it for the others.
    response_format: dict | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob), best first


@dataclass(frozen=True)
class PredictionUsage:
    """So far in a request: prediction tokens that were drafted and accepted into the output,
    and those drafted and rejected (OpenAI's completion_tokens_details names)."""

    accepted: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class TokenOutput:
    """One step of a request. `token_id` None: a finish-only output (EOS, abort).

    finish_reason: None while running; "length" on the max_tokens-th token; "stop" on EOS;
    "abort" when cancelled. `prediction`: the request's running totals, where the engine used
    a prediction (None otherwise). `cached_tokens`: prompt tokens the engine restored from its
    prefix cache instead of computing them, where it has one (None: it does not say); the server
    reports it as usage.prompt_tokens_details.cached_tokens.
    """

    token_id: int | None
    logprobs: TokenLogprob | None = None
    finish_reason: str | None = None
    prediction: PredictionUsage | None = None
    cached_tokens: int | None = None


class GenerationFailed(Exception):
    """The engine failed while running a request; the server answers 500 / an error event."""


class EngineStream(Protocol):
    """One submitted request: iterate for outputs (the last carries a finish reason)."""

    def __aiter__(self) -> AsyncIterator[TokenOutput]: ...

    def cancel(self) -> None:
        """Stop generating (client gone, stop string hit). Idempotent, callable from the event loop."""


class ServingEngine(Protocol):
    tokenizer: object
    max_model_len: int
    vocab_size: int

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> EngineStream:
        """Queue a request; called from the event loop."""

    def metrics(self) -> dict[str, int]:
        """Counters for /metrics, at least `forward_passes`."""

    def reset_prefix_cache(self) -> bool: ...

    def shutdown(self) -> None: ...


def check_fits(prompt_ids: list[int], params: SamplingParams, max_model_len: int) -> None:
    """Raises ValueError (the server's 400) for a request an engine cannot run: no prompt, or more
    tokens than its context holds."""
    if not prompt_ids:
        raise ValueError("the prompt has no tokens")
    if len(prompt_ids) + params.max_tokens > max_model_len:
        raise ValueError(f"prompt ({len(prompt_ids)}) + max_tokens ({params.max_tokens}) exceeds "
                         f"max_model_len {max_model_len}")
