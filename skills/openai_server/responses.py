"""Response and stream-chunk bodies, shaped as OpenAI / vLLM shape them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from skills.engine_api import PredictionUsage, TokenLogprob
from .outputs import Delta, JobResult

# JSON has no -inf; vLLM clamps the same way.
MIN_LOGPROB = -9999.0

TokenText = Callable[[int], str]


def token_text_fn(tokenizer) -> TokenText:
    """A token's own string: `decode([id])` with special tokens kept, as vLLM reports tokens."""

    @lru_cache(maxsize=65536)
    def token_text(token_id: int) -> str:
        return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return token_text


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    accepted_prediction_tokens: int = 0  # 0 where the engine did not use a prediction
    rejected_prediction_tokens: int = 0
    cached_tokens: int | None = None  # prompt tokens restored from the engine's prefix cache; None: not said

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, prediction: PredictionUsage | None,
           cached_tokens: int | None = None) -> Usage:
        if prediction is None:
            return cls(prompt_tokens, completion_tokens, cached_tokens=cached_tokens)
        # A stop string can end the text before the engine's last accepted run: never report
        # more accepted prediction tokens than the completion has.
        accepted = min(prediction.accepted, completion_tokens)
        return cls(prompt_tokens, completion_tokens, accepted, prediction.rejected, cached_tokens)

    def to_dict(self) -> dict[str, Any]:
        body = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens_details": {"accepted_prediction_tokens": self.accepted_prediction_tokens,
                                          "rejected_prediction_tokens": self.rejected_prediction_tokens},
        }
        if self.cached_tokens is not None:  # OpenAI's and vLLM's name for prefix-cache hits
            body["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return body


def _logprob(value: float) -> float:
    return max(value, MIN_LOGPROB)


class Shaper:
    """Shared envelope of one response: id, created, model."""

    id_prefix = ""

    def __init__(self, model: str, token_text: TokenText) -> None:
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.token_text = token_text

    def _envelope(self, obj: str, choices: list[dict], usage: Usage | None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                                "choices": choices}
        if usage is not None:
            body["usage"] = usage.to_dict()
        return body


class CompletionShaper(Shaper):
    id_prefix = "cmpl"

    def __init__(self, model: str, token_text: TokenText) -> None:
        super().__init__(model, token_text)
        self._stream_offset = 0  # text_offset of the next streamed token

    def prelude(self, usage: Usage | None) -> list[dict[str, Any]]:
        return []

    def chunk(self, delta: Delta, usage: Usage | None) -> dict[str, Any]:
        logprobs = None
        if delta.logprobs:
            logprobs, self._stream_offset = self._logprobs(list(delta.logprobs), self._stream_offset)
        choice = {"index": 0, "text": delta.text, "logprobs": logprobs, "finish_reason": delta.finish_reason}
        return self._envelope("text_completion", [choice], usage)

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return self._envelope("text_completion", [], usage)

    def response(self, result: JobResult, usage: Usage, want_logprobs: bool) -> dict[str, Any]:
        logprobs = self._logprobs(result.logprobs, 0)[0] if want_logprobs else None
        choice = {"index": 0, "text": result.text, "logprobs": logprobs, "finish_reason": result.finish_reason}
        return self._envelope("text_completion", [choice], usage)

    def _logprobs(self, entries: list[TokenLogprob], offset: int) -> tuple[dict[str, Any], int]:
        tokens, offsets = [], []
        for entry in entries:
            tokens.append(self.token_text(entry.token_id))
            offsets.append(offset)
            offset += len(tokens[-1])
        body = {
            "tokens": tokens,
            "token_logprobs": [_logprob(e.logprob) for e in entries],
            "top_logprobs": [self._top(e) for e in entries],
            "text_offset": offsets,
        }
        return body, offset

    def _top(self, entry: TokenLogprob) -> dict[str, float]:
        # vLLM's completions always list the chosen token too, so it may hold k + 1 entries.
        top: dict[str, float] = {}
        for token_id, logprob in (*entry.top, (entry.token_id, entry.logprob)):
            top.setdefault(self.token_text(token_id), _logprob(logprob))
        return top


class ChatShaper(Shaper):
    id_prefix = "chatcmpl"

    def prelude(self, usage: Usage | None) -> list[dict[str, Any]]:
        """The role-only chunk, sent before generation starts."""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}
        return [self._envelope("chat.completion.chunk", [choice], usage)]

    def chunk(self, delta: Delta, usage: Usage | None) -> dict[str, Any]:
        logprobs = {"content": [self._entry(e) for e in delta.logprobs]} if delta.logprobs else None
        choice = {"index": 0, "delta": {"content": delta.text}, "logprobs": logprobs,
                  "finish_reason": delta.finish_reason}
        return self._envelope("chat.completion.chunk", [choice], usage)

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return self._envelope("chat.completion.chunk", [], usage)

    def response(self, result: JobResult, usage: Usage, want_logprobs: bool) -> dict[str, Any]:
        logprobs = {"content": [self._entry(e) for e in result.logprobs]} if want_logprobs else None
        choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": logprobs,
                  "finish_reason": result.finish_reason}
        return self._envelope("chat.completion", [choice], usage)

    def _entry(self, entry: TokenLogprob) -> dict[str, Any]:
        body = self._token(entry.token_id, entry.logprob)
        body["top_logprobs"] = [self._token(t, lp) for t, lp in entry.top]
        return body

    def _token(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.token_text(token_id)
        return {"token": text, "logprob": _logprob(logprob), "bytes": list(text.encode("utf-8"))}
