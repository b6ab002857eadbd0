"""Streaming speech recognition over a WebSocket: `WS /v1/audio/stream`.

The client sends binary frames of PCM16 mono audio, one chunk at a time (at real-time pace unless
the payload says otherwise), then `{"type": "finalize"}`. The server answers
`{"type": "partial", "text": ..., "chunk": i}` per chunk (or `"samples": n`, the samples covered so
far) and, after finalize, `{"type": "final", "text": ...}`; `{"type": "error", "message": ...}`
fails the request.

Unit: audio seconds. A partial carries the seconds of audio it newly covers; the final carries what
no partial covered (0 when they all did). Each chunk's send time is kept (`record.inputs`), so a
scenario can match a partial to its chunk and measure per-chunk latency; the final's event keeps
when finalize went out (`finalize_sent`). Every partial is recorded as it came (a repeated or
out-of-order chunk too: the scenario's oracle judges the order). A message is timed when its bytes
arrived (harness/transports/arrivals.py), not when the event loop got to it. After the final the
server must close: a message that still comes within AFTER_FINAL_S fails the request.

Payload: {"audio": bytes (PCM16 little-endian mono), "sample_rate": 16000, "chunk_s": 2.0,
"realtime": true}.
"""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from harness.client import MalformedStream, json_object
from harness.records import Event, RequestRecord
from harness.transports.arrivals import MessageArrivals
from harness.transports.base import Transport

ROUTE = "/v1/audio/stream"
BYTES_PER_SAMPLE = 2
AFTER_FINAL_S = 0.5  # how long the socket is watched after the final for anything more


def chunks(audio: bytes, sample_rate: int, chunk_s: float) -> list[bytes]:
    size = max(int(sample_rate * chunk_s), 1) * BYTES_PER_SAMPLE
    return [audio[i:i + size] for i in range(0, len(audio), size)]


class _Coverage:
    """Seconds of audio the server's messages have covered so far, from chunk indexes or sample counts."""

    def __init__(self, parts: list[bytes], sample_rate: int):
        self.ends = []  # seconds covered once chunk i is answered
        total = 0
        for part in parts:
            total += len(part) // BYTES_PER_SAMPLE
            self.ends.append(total / sample_rate)
        self.sample_rate = sample_rate
        self.covered = 0.0

    @property
    def total(self) -> float:
        return self.ends[-1] if self.ends else 0.0

    def advance(self, message: dict) -> float:
        """The seconds this message newly covers."""
        if "chunk" in message:
            index = message["chunk"]
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.ends):
                raise MalformedStream(f"a partial names chunk {index!r} of {len(self.ends)}")
            reach = self.ends[index]
        elif "samples" in message:
            samples = message["samples"]
            if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
                raise MalformedStream(f"a partial covers {samples!r} samples, not a count")
            reach = min(samples / self.sample_rate, self.total)
        else:
            raise MalformedStream("a partial names neither its chunk nor the samples it covers")
        new = max(reach - self.covered, 0.0)
        self.covered = max(self.covered, reach)
        return new

    def rest(self) -> float:
        return max(self.total - self.covered, 0.0)


def _message(raw: aiohttp.WSMessage) -> dict:
    if raw.type != aiohttp.WSMsgType.TEXT:
        raise MalformedStream(f"a {raw.type.name} message where a JSON text message was expected")
    message = json_object(raw.data, "a message")
    if not isinstance(message.get("text", ""), str):
        raise MalformedStream(f"a message's text is {str(message.get('text'))[:80]}, not a string")
    return message


class AudioStream(Transport, unit="audio_s", unit_source="audio_covered"):
    async def exchange(self, client: aiohttp.ClientSession, base_url: str, payload: dict, record: RequestRecord,
                       start: float) -> None:
        rate = int(payload.get("sample_rate", 16000))
        parts = chunks(payload["audio"], rate, float(payload.get("chunk_s", 2.0)))
        async with client.ws_connect(base_url.replace("http", "ws", 1) + ROUTE) as ws:
            finalize_sent: list[float] = []
            sender = asyncio.ensure_future(self._send_all(ws, parts, payload, record, start, finalize_sent))
            try:
                with MessageArrivals(ws) as arrivals:
                    await self._receive(ws, arrivals, _Coverage(parts, rate), record, start, finalize_sent)
                if record.final is not None and record.error is None:
                    await self._nothing_after_final(ws, record)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

    def missing(self, record: RequestRecord) -> str | None:
        return None if record.final is not None else "the stream closed before a final transcript"

    @staticmethod
    async def _send_all(ws, parts: list[bytes], payload: dict, record: RequestRecord, start: float,
                        finalize_sent: list[float]) -> None:
        chunk_s = float(payload.get("chunk_s", 2.0))
        for i, part in enumerate(parts):
            if payload.get("realtime", True):
                delay = start + i * chunk_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send_bytes(part)
            record.inputs.append(time.perf_counter() - start)
        await ws.send_str(json.dumps({"type": "finalize"}))
        finalize_sent.append(time.perf_counter() - start)

    @staticmethod
    async def _nothing_after_final(ws, record: RequestRecord) -> None:
        try:
            raw = await ws.receive(timeout=AFTER_FINAL_S)
        except asyncio.TimeoutError:
            return  # the server kept the socket open, but quiet: the client closes it
        if raw.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            record.error = f"protocol: a message after the final transcript ({str(raw.data)[:80]})"

    @staticmethod
    async def _receive(ws, arrivals: MessageArrivals, coverage: _Coverage, record: RequestRecord, start: float,
                       finalize_sent: list[float]) -> None:
        async for raw in ws:
            now = arrivals.at(raw) - start
            if raw.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return
            message = _message(raw)
            kind = message.get("type")
            if kind == "partial":
                record.events.append(Event(now, coverage.advance(message),
                                           {k: message[k] for k in ("chunk", "samples", "text") if k in message}))
            elif kind == "final":
                record.final = message.get("text", "")
                record.events.append(Event(now, coverage.rest(), {"final": record.final, "finalize_sent":
                                                                  finalize_sent[0] if finalize_sent else None}))
                record.finish_reason = "final"
                return
            elif kind == "error":
                record.error = f"stream error: {message.get('message', message)}"
                return
            else:
                raise MalformedStream(f"a message of type {kind!r}")
