"""The interface between the streaming speech-recognition server and any engine behind it.

The server speaks the protocol (WebSocket frames, chunk indexes, JSON messages, errors, the
offline transcription route, /metrics); an engine only turns audio into transcripts. Every
transcript follows one rule (harness/transcription.py says it, and the reference there defines
it): greedy decoding on the encoder's output for the first `n // 320 * 320` samples received,
until end-of-sequence or `n_usable * 13 // 32000` new tokens (6.5 tokens per audio second).

Methods are awaited on the server's event loop; an engine does its work elsewhere (its own
thread) and may batch the work of many streams together. Samples are int16 numpy arrays, 16 kHz
mono.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

SAMPLE_RATE = 16000


class StreamingTranscriber(Protocol):
    def open(self, stream: str) -> None:
        """A new stream (a WebSocket connection) with no audio yet."""

    async def feed(self, stream: str, samples: np.ndarray) -> str:
        """Append one chunk's samples to the stream; return the transcript of all its audio so far.
        Calls for one stream are awaited one after another, in chunk order."""

    async def finalize(self, stream: str) -> str:
        """The stream's final transcript: the transcript of all its audio (no more will come)."""

    def close(self, stream: str) -> None:
        """Forget the stream (finished, or its client vanished); never disturbs other streams."""

    async def transcribe(self, samples: np.ndarray) -> str:
        """A whole recording's transcript, by the same rule (POST /v1/audio/transcriptions)."""

    def counters(self) -> dict[str, float]:
        """Monotonic counters for /metrics, at least `encoder_frames_computed` and
        `encoder_frames_reused` (encoder output frames computed, and kept from an earlier chunk
        instead of computed again), summed over every stream."""
