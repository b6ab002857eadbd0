"""A stream's state on the engine thread: its audio, its encoder cache, its last transcript, and
the requests (feed, finalize) waiting for a transcript, in order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from skills.encoder_cache import EncoderState
from skills.encoder_cache.cross_kv import CrossKV

Reply = Callable[[str | BaseException | None], None]  # None: dropped (the stream closed)


@dataclass(frozen=True)
class Transcript:
    samples: int  # the usable samples it transcribes
    tokens: tuple[int, ...]  # without the end-of-sequence token
    stopped: bool  # ended by end-of-sequence (else by the token limit)
    text: str

    def draft(self, eos: int) -> list[int]:
        """What the next chunk's decode proposes: these tokens, and the end where it ended."""
        return [*self.tokens, eos] if self.stopped else list(self.tokens)


@dataclass
class Request:
    """A feed (samples) or a finalize (none): answered with the transcript of all audio before it."""

    samples: np.ndarray | None
    reply: Reply
    upto: int = 0  # the stream's samples received once this request's arrived (set on the engine thread)


@dataclass
class StreamState:
    id: str
    encoder: EncoderState
    cross: CrossKV
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # every sample received
    received: int = 0
    encoded: int = 0  # samples through the encoder
    last: Transcript = field(default_factory=lambda: Transcript(0, (), False, ""))
    requests: deque[Request] = field(default_factory=deque)
    accepted: int | None = None  # draft tokens its last verify accepted (None: none verified yet)
    busy: bool = False  # a request of this stream is being decoded
    closed: bool = False

    def append(self, samples: np.ndarray) -> None:
        if self.received + len(samples) > len(self.audio):
            bigger = np.zeros(max(self.received + len(samples), 2 * len(self.audio)), np.int16)
            bigger[:self.received] = self.audio[:self.received]
            self.audio = bigger
        self.audio[self.received:self.received + len(samples)] = samples
        self.received += len(samples)
