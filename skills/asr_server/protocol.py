"""The audio stream's wire format: client frames read into typed events, server messages built.

Client: each binary frame is one chunk of PCM16 little-endian mono 16 kHz audio; one text frame
`{"type": "finalize"}` ends the stream. Server: `{"type": "partial", "chunk": i, "samples": n,
"text": ...}` per chunk, `{"type": "final", "text": ..., "samples": n}`, or `{"type": "error",
"message": ...}`; the server closes the socket after a final or an error.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

ROUTE = "/v1/audio/stream"
BYTES_PER_SAMPLE = 2
CLOSE_DONE = 1000
CLOSE_PROTOCOL = 1008  # "policy violation": the client broke the protocol
CLOSE_ENGINE = 1011  # "internal error": the engine failed


@dataclass(frozen=True)
class Chunk:
    samples: np.ndarray  # int16, native byte order, writable


@dataclass(frozen=True)
class Finalize:
    pass


@dataclass(frozen=True)
class Fault:
    """A frame that breaks the protocol: the stream is answered an error and closed."""

    message: str


Event = Chunk | Finalize | Fault


def read_frame(message: Mapping, finalized: bool) -> Event | None:
    """A Starlette `websocket.receive` message as an event of the stream; None: the client is gone."""
    if message["type"] == "websocket.disconnect":
        return None
    data, text = message.get("bytes"), message.get("text")
    if finalized:
        kind = "binary" if data is not None else "text"
        return Fault(f"a {kind} frame after finalize: nothing may follow it")
    return _chunk(data) if data is not None else _finalize(text or "")


def _chunk(data: bytes) -> Chunk | Fault:
    if not data:
        return Fault("an empty binary frame: each binary frame is one chunk of PCM16 audio")
    if len(data) % BYTES_PER_SAMPLE:
        return Fault(f"a binary frame of {len(data)} bytes: PCM16 audio takes an even number of bytes")
    return Chunk(np.frombuffer(data, "<i2").astype(np.int16))


def _finalize(text: str) -> Finalize | Fault:
    try:
        request = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the decoder's recursion limit
        request = None
    if isinstance(request, dict) and request.get("type") == "finalize":
        return Finalize()
    return Fault(f'a text frame must be {{"type": "finalize"}}, got {text[:80]!r}')


def partial(chunk: int, samples: int, text: str) -> dict:
    return {"type": "partial", "chunk": chunk, "samples": samples, "text": text}


def final(text: str, samples: int) -> dict:
    return {"type": "final", "text": text, "samples": samples}


def error(message: str) -> dict:
    return {"type": "error", "message": message}
