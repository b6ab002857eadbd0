"""Test-double stack for setting D (streaming speech recognition with an encoder cache): a real
model whose transcripts are right, and five ways wrong, each in one thing only.

It serves a transformers `moonshine_streaming` folder (the tiny one:
`ensure_model("moonshine-streaming-tiny")`) behind the shared ASR layer (skills/asr_server). Every
transcript is computed as hf-reference's full recompute computes it (baselines/hf_reference/asr.py:
the stream's whole audio encoded again and decoded from scratch, one job at a time, the final too);
it keeps no encoder state. /metrics counts `encoder_frames_computed` and `encoder_frames_reused`.

`--mode`:
- honest:      right transcripts; every frame it encodes is counted computed, none reused.
- drift:       a partial transcribes the audio less its last 16 encoder frames (16 * 320 samples), as
               a cache that went stale on the encoder's lookahead (12 frames) would; the final is right.
- fake-reuse:  right transcripts by a full recompute, counted computed as they are, but the reused
               counter also claims every frame its stream had encoded before.
- reorder:     the partials of chunks 0 and 1 go out swapped.
- twice:       the partial of chunk 0 goes out twice.
- after-final: one more partial (the last one again) after the final, before the socket closes.

    python tests/stacks/asr_double.py --model DIR --port P [--mode honest] [--threads N]
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never talk to a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import uvicorn

from baselines.hf_reference.asr import SpeechModel, encoded_frames, load_speech_model
from harness.machine import usable_cpus
from skills.asr_server import create_app

MODES = ("honest", "drift", "fake-reuse", "reorder", "twice", "after-final")
DRIFT_SAMPLES = 16 * 320  # the encoder's lookahead, in samples

log = logging.getLogger("asr-double")


@dataclass
class StreamAudio:
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    encoded: int = 0  # frames encoded for this stream so far (the most at once): what fake-reuse claims


class DoubleTranscriber:
    """A StreamingTranscriber recomputing everything; `drift` and `fake-reuse` are its faults."""

    def __init__(self, speech: SpeechModel, mode: str) -> None:
        self.speech = speech
        self.mode = mode
        self._streams: dict[str, StreamAudio] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-double")
        self._computed = 0  # the counters are written by the worker thread only
        self._reused = 0

    def open(self, stream: str) -> None:
        self._streams[stream] = StreamAudio()

    async def feed(self, stream: str, samples: np.ndarray) -> str:
        audio = self._streams[stream]
        audio.samples = np.concatenate([audio.samples, samples])
        heard = audio.samples[:max(len(audio.samples) - DRIFT_SAMPLES, 0)] if self.mode == "drift" else audio.samples
        return await self._run(heard, audio)

    async def finalize(self, stream: str) -> str:
        audio = self._streams[stream]
        return await self._run(audio.samples, audio)

    def close(self, stream: str) -> None:
        self._streams.pop(stream, None)

    async def transcribe(self, samples: np.ndarray) -> str:
        return await self._run(samples, StreamAudio())

    def counters(self) -> dict[str, float]:
        return {"encoder_frames_computed": self._computed, "encoder_frames_reused": self._reused}

    async def _run(self, samples: np.ndarray, audio: StreamAudio) -> str:
        return await asyncio.wrap_future(self._worker.submit(self._job, samples, audio))

    def _job(self, samples: np.ndarray, audio: StreamAudio) -> str:
        frames = encoded_frames(len(samples))
        claimed_reused = min(audio.encoded, frames) if self.mode == "fake-reuse" else 0
        self._computed += frames
        self._reused += claimed_reused
        audio.encoded = max(audio.encoded, frames)
        return self.speech.transcript(samples)


class FaultySend:
    """The ASGI `send` of one audio-stream connection, rewriting what the server sends as the
    wire-level modes (reorder, twice, after-final) misbehave; other modes pass it through."""

    def __init__(self, send, mode: str) -> None:
        self.send = send
        self.mode = mode
        self.held: dict | None = None  # reorder: chunk 0's partial, until chunk 1's is out
        self.last: dict | None = None  # after-final: the last partial sent

    async def __call__(self, message: dict) -> None:
        for out in self._rewrite(message, _sent_json(message)):
            await self.send(out)

    def _rewrite(self, message: dict, body: dict) -> list[dict]:
        chunk = body.get("chunk") if body.get("type") == "partial" else None
        if self.mode == "twice":
            return [message, message] if chunk == 0 else [message]
        if self.mode == "reorder":
            if chunk == 0:
                self.held = message
                return []
            held, self.held = self.held, None
            return [m for m in ([message, held] if chunk == 1 else [held, message]) if m is not None]
        if self.mode == "after-final":
            if chunk is not None:
                self.last = message
            if body.get("type") == "final":
                extra = self.last or {"type": "websocket.send", "text": json.dumps(
                    {"type": "partial", "chunk": 0, "samples": body.get("samples", 0), "text": ""})}
                return [message, extra]
        return [message]


def _sent_json(message: dict) -> dict:
    """The JSON object a `websocket.send` message carries; {} for anything else (accept, close)."""
    if message.get("type") != "websocket.send" or message.get("text") is None:
        return {}
    body = json.loads(message["text"])
    return body if isinstance(body, dict) else {}


class WireFaults:
    """ASGI wrapper: each WebSocket connection's sends go through a FaultySend."""

    def __init__(self, app, mode: str) -> None:
        self.app = app
        self.mode = mode

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            send = FaultySend(send, self.mode)
        await self.app(scope, receive, send)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a moonshine_streaming model folder")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mode", choices=MODES, default="honest")
    p.add_argument("--threads", type=int, default=len(usable_cpus()), help="torch intra-op threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    torch.set_num_threads(args.threads)
    engine = DoubleTranscriber(load_speech_model(args.model, "float32", "cpu"), args.mode)
    log.info("mode %s, %d torch threads", args.mode, args.threads)
    app = WireFaults(create_app(engine, args.model.resolve().name), args.mode)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
