"""From an engine's token outputs to text deltas: detokenization, stop strings, collection.

Stop strings are the server's job (as vLLM's output processor does it): when one appears the
request is finished here and the engine stream is cancelled, so the engine may have run one
step more than was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from .detokenizer import IncrementalText
from .engine_api import EngineStream, PredictionUsage, SamplingParams, TokenLogprob


@dataclass(frozen=True)
class Delta:
    """One step of a request's text. `token_id` is None on a finish-only delta (EOS, abort)."""

    text: str
    token_id: int | None
    logprobs: TokenLogprob | None
    finish_reason: str | None
    prediction: PredictionUsage | None = None  # the engine's running totals, where it used a prediction


@dataclass(frozen=True)
class JobResult:
    """A whole request's output, for non-streaming responses."""

    text: str
    finish_reason: str
    n_tokens: int
    logprobs: list[TokenLogprob]
    prediction: PredictionUsage | None = None


async def text_deltas(stream: EngineStream, tokenizer, params: SamplingParams) -> AsyncIterator[Delta]:
    """The request's deltas until the one with a finish reason; cancels the engine stream at the end."""
    text = IncrementalText(tokenizer, params.stop)
    prediction: PredictionUsage | None = None
    try:
        async for out in stream:
            prediction = out.prediction or prediction
            if out.token_id is None:
                yield Delta(text.flush(), None, None, out.finish_reason or "stop", prediction)
                return
            piece = text.add(out.token_id)
            finish = "stop" if text.stopped else out.finish_reason
            if finish is not None:
                piece += text.flush()
            yield Delta(piece, out.token_id, out.logprobs, finish, prediction)
            if finish is not None:
                return
    finally:
        stream.cancel()


async def collect(deltas: AsyncIterator[Delta]) -> JobResult:
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    n_tokens, finish_reason = 0, "stop"
    prediction: PredictionUsage | None = None
    async for delta in deltas:
        prediction = delta.prediction or prediction
        parts.append(delta.text)
        n_tokens += delta.token_id is not None
        if delta.logprobs is not None:
            logprobs.append(delta.logprobs)
        finish_reason = delta.finish_reason or finish_reason
    return JobResult("".join(parts), finish_reason, n_tokens, logprobs, prediction)
