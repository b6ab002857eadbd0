"""From an engine's token outputs to text deltas: detokenization, stop strings, collection.

Stop strings are the server's job (as vLLM's output processor does it): when one appears the
request is finished here and the engine stream is cancelled, so the engine may have run one
step more than was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from .detokenizer import IncrementalText
from skills.engine_api import EngineStream, PredictionUsage, SamplingParams, TokenLogprob, TokenOutput


@dataclass(frozen=True)
class Delta:
    """The text of one or more tokens that arrived together (an engine step's: a speculative step
    emits several), sent as one stream chunk. `token_ids` is empty on a finish-only delta (EOS, abort)."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...]
    finish_reason: str | None
    prediction: PredictionUsage | None = None  # the engine's running totals, where it used a prediction
    cached_tokens: int | None = None  # prompt tokens the engine restored from its prefix cache, where it says


@dataclass(frozen=True)
class JobResult:
    """A whole request's output, for non-streaming responses."""

    text: str
    finish_reason: str
    n_tokens: int
    logprobs: list[TokenLogprob]
    prediction: PredictionUsage | None = None
    cached_tokens: int | None = None


async def _batches(stream: EngineStream) -> AsyncIterator[list[TokenOutput]]:
    """Outputs grouped as they arrived, where the stream can tell (QueueStream.batches), else one by one."""
    if hasattr(stream, "batches"):
        async for items in stream.batches():
            yield items
    else:
        async for out in stream:
            yield [out]


async def text_deltas(stream: EngineStream, tokenizer, params: SamplingParams) -> AsyncIterator[Delta]:
    """The request's deltas until the one with a finish reason; cancels the engine stream at the end.
    Tokens that arrive together make one delta (vLLM sends a speculative step's tokens as one chunk)."""
    text = IncrementalText(tokenizer, params.stop)
    prediction: PredictionUsage | None = None
    cached: int | None = None
    try:
        async for items in _batches(stream):
            pieces: list[str] = []
            ids: list[int] = []
            logprobs: list[TokenLogprob] = []
            finish = None
            for out in items:
                prediction = out.prediction or prediction
                cached = out.cached_tokens if out.cached_tokens is not None else cached
                if out.token_id is None:
                    pieces.append(text.flush())
                    finish = out.finish_reason or "stop"
                    break
                pieces.append(text.add(out.token_id))
                ids.append(out.token_id)
                if out.logprobs is not None:
                    logprobs.append(out.logprobs)
                finish = "stop" if text.stopped else out.finish_reason
                if finish is not None:
                    pieces.append(text.flush())
                    break
            yield Delta("".join(pieces), tuple(ids), tuple(logprobs), finish, prediction, cached)
            if finish is not None:
                return
    finally:
        stream.cancel()


async def collect(deltas: AsyncIterator[Delta]) -> JobResult:
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    n_tokens, finish_reason = 0, "stop"
    prediction: PredictionUsage | None = None
    cached: int | None = None
    async for delta in deltas:
        prediction = delta.prediction or prediction
        cached = delta.cached_tokens if delta.cached_tokens is not None else cached
        parts.append(delta.text)
        n_tokens += len(delta.token_ids)
        logprobs.extend(delta.logprobs)
        finish_reason = delta.finish_reason or finish_reason
    return JobResult("".join(parts), finish_reason, n_tokens, logprobs, prediction, cached)
