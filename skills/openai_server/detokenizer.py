"""Incremental detokenization with stop strings.

The text of the output is always `decode(all output ids)`; each step emits the new suffix.
Streamed deltas therefore concatenate to exactly the non-streamed text.
"""

from __future__ import annotations

from typing import Protocol

INCOMPLETE_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, token_ids: list[int], **kwargs: object) -> str: ...


class IncrementalText:
    """Turns output token ids into text deltas, trimming at the first stop string."""

    def __init__(self, tokenizer: Decoder, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        # Text that could still become the start of a stop string is held back, as vLLM does.
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._text = ""
        self._emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        return self._text

    def add(self, token_id: int) -> str:
        """Append one token; return the text that may be emitted now. Sets `stopped` on a stop string."""
        self._ids.append(token_id)
        full = self._decode()
        if full.endswith(INCOMPLETE_CHAR):
            return ""  # a multi-byte character is still incomplete
        cut = self._find_stop(full)
        if cut is not None:
            self._text = full[:cut]
            self.stopped = True
            return self._take(len(self._text))
        self._text = full
        return self._take(len(full) - self._holdback)

    def flush(self) -> str:
        """Everything not yet emitted; call once when generation has finished."""
        if not self.stopped:
            self._text = self._decode()
        return self._take(len(self._text))

    def _decode(self) -> str:
        return self._tokenizer.decode(
            self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _find_stop(self, full: str) -> int | None:
        if not self._stop:
            return None
        # A new match has to end in the newly decoded part, so start just before it.
        start = max(0, len(self._text) - self._holdback)
        hits = [i for i in (full.find(s, start) for s in self._stop) if i >= 0]
        return min(hits) if hits else None

    def _take(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        delta = self._text[self._emitted : upto]
        self._emitted = upto
        return delta
