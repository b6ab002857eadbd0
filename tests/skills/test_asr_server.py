"""The streaming ASR server layer (skills/asr_server) over a fake transcriber, served by a real
uvicorn on a free port and driven by real WebSocket and HTTP clients. No model runs."""
from __future__ import annotations

import asyncio
import io
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import httpx
import numpy as np
import pytest
import uvicorn
import websockets

from harness import counters
from harness.launcher import free_port
from skills.asr_server import create_app

FINALIZE = '{"type": "finalize"}'
FRAME = 320


class FakeTranscriber:
    """Test double: the transcript of a stream's audio names its sample count and sample sum (so a
    byte-order slip shows); it may take its time, or fail at a stream's second chunk; it records
    every open and close."""

    def __init__(self, feed_s: float = 0.0, finalize_s: float = 0.0, fails: bool = False) -> None:
        self.feed_s = feed_s
        self.finalize_s = finalize_s
        self.fails = fails
        self.live: dict[str, list[int]] = {}  # stream -> [samples, sum]
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.frames = 0

    @staticmethod
    def text(n: int, total: int) -> str:
        return f"{n} samples, sum {total}"

    def open(self, stream: str) -> None:
        self.opened.append(stream)
        self.live[stream] = [0, 0]

    async def feed(self, stream: str, samples: np.ndarray) -> str:
        await asyncio.sleep(self.feed_s)
        heard = self.live[stream]
        if self.fails and heard[0]:
            raise RuntimeError("boom")
        heard[0] += len(samples)
        heard[1] += int(samples.astype(np.int64).sum())
        self.frames += heard[0] // FRAME
        return self.text(*heard)

    async def finalize(self, stream: str) -> str:
        await asyncio.sleep(self.finalize_s)
        return "final: " + self.text(*self.live[stream])

    def close(self, stream: str) -> None:
        self.closed.append(stream)
        del self.live[stream]

    async def transcribe(self, samples: np.ndarray) -> str:
        return self.text(len(samples), int(samples.astype(np.int64).sum()))

    def counters(self) -> dict[str, float]:
        return {"encoder_frames_computed": self.frames, "encoder_frames_reused": 0}


@contextmanager
def serving(engine: FakeTranscriber) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, "fake-asr"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def pcm(samples: list[int] | np.ndarray) -> bytes:
    return np.asarray(samples, "<i2").tobytes()


def audio(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3000, 3000, n).astype(np.int16)


async def exchange(url: str, frames: list[bytes | str]) -> tuple[list[dict], int | None]:
    """Send every frame at once, then read every message until the server closes: (messages, close code)."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url.replace("http", "ws", 1) + "/v1/audio/stream") as ws:
            for frame in frames:
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
            messages = [message.json() async for message in ws if message.type == aiohttp.WSMsgType.TEXT]
            return messages, ws.close_code


def expected_partials(chunks: list[np.ndarray]) -> list[dict]:
    out, n, total = [], 0, 0
    for i, chunk in enumerate(chunks):
        n, total = n + len(chunk), total + int(chunk.astype(np.int64).sum())
        out.append({"type": "partial", "chunk": i, "samples": n, "text": FakeTranscriber.text(n, total)})
    return out


def test_one_partial_per_chunk_in_order_then_the_final_and_close() -> None:
    chunks = [audio(1600, 1), audio(3200, 2), audio(1, 3), audio(4801, 4)]
    engine = FakeTranscriber(feed_s=0.01)
    with serving(engine) as url:
        messages, code = asyncio.run(exchange(url, [pcm(c) for c in chunks] + [FINALIZE]))
    partials = expected_partials(chunks)
    assert messages[:-1] == partials
    assert messages[-1] == {"type": "final", "text": "final: " + partials[-1]["text"], "samples": 9602}
    assert code == 1000
    assert engine.opened == engine.closed == ["ws-0"] and not engine.live


def test_finalize_with_no_audio_gives_an_empty_stream_final() -> None:
    engine = FakeTranscriber()
    with serving(engine) as url:
        messages, code = asyncio.run(exchange(url, [FINALIZE]))
    assert messages == [{"type": "final", "text": "final: 0 samples, sum 0", "samples": 0}] and code == 1000


GOOD = [audio(1600, 5), audio(1600, 6), audio(1600, 7)]
FAULTS = {
    "odd byte count": ([pcm(GOOD[0]), b"\x01\x02\x03"], "3 bytes"),
    "empty frame": ([pcm(GOOD[0]), b""], "empty binary frame"),
    "not JSON": ([pcm(GOOD[0]), "finalize please"], "must be"),
    "not finalize": ([pcm(GOOD[0]), '{"type": "flush"}'], "must be"),
    "frame after finalize": ([pcm(GOOD[0]), FINALIZE, pcm(GOOD[1])], "after finalize"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_stream_gets_an_error_and_a_concurrent_stream_completes(fault: str) -> None:
    frames, says = FAULTS[fault]
    # A slow finalize: the frame sent right after it arrives before the final could go out.
    engine = FakeTranscriber(feed_s=0.02, finalize_s=0.3)

    async def both():
        return await asyncio.gather(exchange(url, frames), exchange(url, [pcm(c) for c in GOOD] + [FINALIZE]))

    with serving(engine) as url:
        (broken, broken_code), (good, good_code) = asyncio.run(both())
    assert broken[0] == expected_partials(GOOD[:1])[0]
    assert [m["type"] for m in broken] == ["partial", "error"] and says in broken[1]["message"], broken
    assert broken_code == 1008
    assert good[:-1] == expected_partials(GOOD) and good[-1]["type"] == "final" and good_code == 1000
    assert sorted(engine.opened) == sorted(engine.closed) == ["ws-0", "ws-1"] and not engine.live


def test_a_vanished_client_is_closed_without_disturbing_another_stream() -> None:
    engine = FakeTranscriber(feed_s=0.3)  # the client vanishes while its chunk is with the engine

    async def vanish():
        async with websockets.connect(url.replace("http", "ws", 1) + "/v1/audio/stream") as ws:
            await ws.send(pcm(GOOD[0]))
            await asyncio.sleep(0.05)
            ws.transport.abort()  # no close frame: the TCP connection just drops

    async def both():
        return (await asyncio.gather(vanish(), exchange(url, [pcm(c) for c in GOOD] + [FINALIZE])))[1]

    with serving(engine) as url:
        good, code = asyncio.run(both())
        deadline = time.monotonic() + 5
        while len(engine.closed) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        metrics = httpx.get(url + "/metrics").text
    assert good[:-1] == expected_partials(GOOD) and good[-1]["type"] == "final" and code == 1000
    assert sorted(engine.closed) == ["ws-0", "ws-1"] and not engine.live
    assert "asr_streams_active 0" in metrics.splitlines()


def test_an_engine_failure_is_an_error_for_that_stream() -> None:
    engine = FakeTranscriber(fails=True)
    with serving(engine) as url:
        messages, code = asyncio.run(exchange(url, [pcm(c) for c in GOOD] + [FINALIZE]))
    assert messages == [expected_partials(GOOD)[0],
                        {"type": "error", "message": "the engine failed: RuntimeError: boom"}]
    assert code == 1011 and engine.closed == ["ws-0"] and not engine.live


def wav(samples: np.ndarray, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels), w.setsampwidth(width), w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes() if width == 2 else bytes(len(samples)))
    return buf.getvalue()


def test_transcriptions_answers_a_16k_mono_pcm16_wav() -> None:
    samples = audio(8000, 8)
    with serving(FakeTranscriber()) as url:
        response = httpx.post(url + "/v1/audio/transcriptions", data={"model": "fake-asr"},
                              files={"file": ("a.wav", wav(samples), "audio/wav")})
    assert response.status_code == 200, response.text
    assert response.json() == {"text": FakeTranscriber.text(8000, int(samples.astype(np.int64).sum()))}


@pytest.mark.parametrize("upload,says", [
    ({"files": {"file": ("a.wav", b"RIFF, but not really", "audio/wav")}}, "not a readable PCM WAV"),
    ({"files": {"file": ("a.wav", wav(audio(800), channels=2), "audio/wav")}}, "2 channels"),
    ({"files": {"file": ("a.wav", wav(audio(800), rate=8000), "audio/wav")}}, "8000 Hz"),
    ({"files": {"file": ("a.wav", wav(audio(800), width=1), "audio/wav")}}, "8-bit"),
    ({"data": {"model": "fake-asr"}}, "file is required"),
    ({"json": {"file": "a.wav"}}, "file is required"),
])
def test_transcriptions_refuses_anything_else_with_a_400(upload: dict, says: str) -> None:
    with serving(FakeTranscriber()) as url:
        response = httpx.post(url + "/v1/audio/transcriptions", **upload)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]["message"], response.text


def test_health_models_and_metrics() -> None:
    engine = FakeTranscriber()
    with serving(engine) as url:
        asyncio.run(exchange(url, [pcm(c) for c in GOOD] + [FINALIZE]))
        health = httpx.get(url + "/health")
        models = httpx.get(url + "/v1/models").json()
        text = httpx.get(url + "/metrics").text
        missing = httpx.get(url + "/v1/nowhere")
    assert health.status_code == 200
    assert models == {"object": "list", "data": [{"id": "fake-asr", "object": "model"}]}
    assert counters.parse(text) == {"asr_encoder_frames_computed_total": 5 + 10 + 15,
                                    "asr_encoder_frames_reused_total": 0, "asr_streams_opened_total": 1,
                                    "asr_chunks_total": 3}
    assert "asr_streams_active 0" in text.splitlines() and "# TYPE asr_streams_active gauge" in text
    assert missing.status_code == 404 and "error" in missing.json()
