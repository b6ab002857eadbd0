"""Setting D's workload, oracle and metrics: streaming speech recognition over a WebSocket.

Streams are cuts of real speech (harness/speech.py) at offsets and lengths drawn from the run's
salt, with a little dither of the same draw, so no stack has heard these bytes before. A stream
goes out in fixed chunks; after each the server answers a partial naming its chunk.

Oracle, on the measured streams themselves (StreamCheck):
  order    - every chunk answered once, in order (a partial names its chunk index);
  partials - the partial after chunk i spells what the reference transcribes for the audio up to
             chunk i (harness/transcription.py; near-tie rule from the reference's side): an
             encoder cache is lossless exactly when this holds at every chunk;
  final    - the final transcript is the reference's for the whole audio;
  closing  - nothing after the final (the transport fails such a stream).
Engagement (reuse_guard), for stacks declaring `encoder_cache`: encoder frames reused grew, and
the frames computed are fewer than a full recompute of every chunk's buffer would compute.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from harness import counters
from harness.bench import OutputsVerdict
from harness.engagement import Guard
from harness.errors import HarnessError
from harness.metrics import stats
from harness.oracle import PromptVerdict, Verdict, compare_text
from harness.records import RequestRecord
from harness.speech import FRAME, RATE, clips
from harness.transcription import EOS, MAX_GAP, TOP_K, judge_transcripts, transcripts, usable

FEATURE = "encoder_cache"
REUSED = ("asr_encoder_frames_reused_total", "encoder_frames_reused")
COMPUTED = ("asr_encoder_frames_computed_total", "encoder_frames_computed")
DITHER = 2  # +- this many LSB of salted noise on every sample


@dataclass(frozen=True)
class Stream:
    """One client's audio and how it is cut into chunks."""

    id: str
    clip: str  # the speech it was cut from
    audio: bytes  # PCM16 little-endian mono, RATE
    chunk: int  # samples per chunk

    @property
    def samples(self) -> int:
        return len(self.audio) // 2

    def ends(self) -> list[int]:
        """Samples received once chunk i has gone out."""
        return [min(i + self.chunk, self.samples) for i in range(0, self.samples, self.chunk)]

    def payload(self, realtime: bool) -> dict:
        return {"audio": self.audio, "sample_rate": RATE, "chunk_s": self.chunk / RATE, "realtime": realtime}

    def full_recompute_frames(self) -> int:
        """Encoder frames a server re-encoding the whole buffer at every chunk computes."""
        return sum(usable(end) // FRAME for end in self.ends())


def _draws(salt: str | None, seed: int, tag: str) -> tuple[random.Random, np.random.Generator]:
    key = f"{salt or 'unsalted'}:D:{seed}:{tag}"
    return random.Random(key), np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def _stream(name: str, clip: str, pcm: np.ndarray, noise: np.random.Generator, chunk_s: float) -> Stream:
    dithered = pcm.astype(np.int32) + noise.integers(-DITHER, DITHER + 1, len(pcm))
    return Stream(name, clip, dithered.clip(-32768, 32767).astype("<i2").tobytes(), round(chunk_s * RATE / FRAME) * FRAME)


def streams(audio_dir: Path, n: int, seconds: list[float], chunk_s: float, seed: int, salt: str | None,
            tag: str = "s") -> list[Stream]:
    """`n` streams of `seconds[0]`..`seconds[1]` s (or a shorter clip whole) cut from the clips,
    on the 20 ms grid."""
    rng, noise = _draws(salt, seed, tag)
    pool = sorted(clips(audio_dir), key=lambda c: c.name)
    out = []
    for i in range(n):
        clip = pool[rng.randrange(len(pool))]
        pcm = clip.samples()
        length = min(round(rng.uniform(*seconds) * RATE / FRAME) * FRAME, len(pcm) // FRAME * FRAME)
        start = rng.randrange(0, (len(pcm) - length) // FRAME + 1) * FRAME
        out.append(_stream(f"{tag}{i}-{clip.name}", clip.name, pcm[start:start + length], noise, chunk_s))
    return out


def whole(audio_dir: Path, names: list[str], chunk_s: float, seed: int, salt: str | None) -> list[Stream]:
    """The named clips whole (their words may be known), dithered by the run's salt."""
    _, noise = _draws(salt, seed, "whole")
    known = {c.name: c for c in clips(audio_dir)}
    missing = [n for n in names if n not in known]
    if missing:
        raise HarnessError(f"no speech clip {', '.join(missing)} (clips: {', '.join(sorted(known))})")
    return [_stream(f"whole-{name}", name, known[name].samples(), noise, chunk_s) for name in names]


def partials(record: RequestRecord) -> list[dict]:
    return [e.data for e in record.events if isinstance(e.data, dict) and "chunk" in e.data]


def judge_stream(model_dir: Path, stream: Stream, record: RequestRecord, top_k: int = TOP_K) -> list[PromptVerdict]:
    """Order, every partial and the final of one stream against the reference."""
    ends = stream.ends()
    got = partials(record)
    order = [p["chunk"] for p in got]
    if order != list(range(len(ends))):
        return [PromptVerdict(f"{stream.id}/order", False, 0, 0,
                              f"partials answered chunks {order[:12]}{'...' if len(order) > 12 else ''}; "
                              f"expected 0..{len(ends) - 1}, each once, in order")]
    final = record.final if isinstance(record.final, str) else ""
    return judge_transcripts(model_dir, stream.id, stream.audio, [*ends, ends[-1]],
                             [p.get("text", "") for p in got] + [final], top_k)


@dataclass(frozen=True)
class StreamCheck:
    """A cell's measured streams judged in full: the order of their partials, every partial and
    every final, against the reference (`streams[i]` is measured request i)."""

    streams: list[Stream]
    top_k: int = TOP_K

    def judge(self, bench, records: list[RequestRecord], cell: str) -> OutputsVerdict:
        judged = [i for i, r in enumerate(records) if r.ok]
        verdicts = [v for i in judged for v in judge_stream(bench.model_dir, self.streams[i], records[i], self.top_k)]
        return OutputsVerdict(Verdict(verdicts), judged, len(records))


def reuse_guard(streams_measured: list[Stream]) -> Guard:
    """Engagement: frames reused, and fewer frames computed than a full recompute's."""
    full = sum(s.full_recompute_frames() for s in streams_measured)

    def fewer(metrics: dict, moved, usage_total) -> str | None:
        computed = counters.first(moved, COMPUTED)
        if computed is None:
            return "no encoder_frames_computed counter: what was reused cannot be weighed against a recompute"
        if computed >= full:
            return (f"{computed:g} encoder frames computed, as many as a full recompute of every chunk "
                    f"({full}): the reuse it reports saved nothing")
        return None
    return Guard(feature=FEATURE, counters=REUSED, consistency=(fewer,))


def chunk_latency(records: list[RequestRecord]) -> dict:
    """Each partial's arrival after the chunk it names went out, over every measured stream."""
    gaps = [p_t - r.inputs[c] for r in records if r.ok for p_t, c in _answered(r) if c < len(r.inputs)]
    return stats("chunk_latency", gaps)


def _answered(record: RequestRecord) -> list[tuple[float, int]]:
    return [(e.t, e.data["chunk"]) for e in record.events
            if isinstance(e.data, dict) and isinstance(e.data.get("chunk"), int)]


def finalize_latency(records: list[RequestRecord]) -> dict:
    """From finalize going out to the final transcript."""
    ends = [e.t - e.data["finalize_sent"] for r in records if r.ok for e in r.events
            if isinstance(e.data, dict) and e.data.get("finalize_sent") is not None]
    return stats("finalize_latency", ends)


def realtime_streams(records: list[RequestRecord]) -> dict:
    """Streams the server kept up with: each chunk's partial came before the next chunk went out
    (the last within one chunk interval). The study's capacity figure, as NVIDIA Riva reports it."""
    held = sum(1 for r in records if r.ok and _kept_pace(r))
    return {"realtime_streams": held, "realtime_share": held / len(records) if records else None}


def _kept_pace(record: RequestRecord) -> bool:
    sent = record.inputs
    if len(sent) < 1:
        return False
    interval = (sent[-1] - sent[0]) / (len(sent) - 1) if len(sent) > 1 else 0.0
    deadlines = sent[1:] + [sent[-1] + interval]
    answered = dict((c, t) for t, c in reversed(_answered(record)))  # the first answer of each chunk
    return all(c in answered and answered[c] <= deadlines[c] for c in range(len(sent)))


def rtfx(records: list[RequestRecord]) -> dict:
    """Audio seconds per second a client waited on the server (its chunks' latencies and the
    finalize), the median over streams: above 1 the server answers faster than speech comes."""
    per_stream = []
    for r in records:
        if not r.ok:
            continue
        waited = sum(t - r.inputs[c] for t, c in _answered(r) if c < len(r.inputs))
        waited += sum(e.t - e.data["finalize_sent"] for e in r.events
                      if isinstance(e.data, dict) and e.data.get("finalize_sent") is not None)
        if waited > 0:
            per_stream.append(r.output_units / waited)
    return {"rtfx": float(np.median(per_stream)) if per_stream else None}


async def disturbed(base_url: str, victim: dict, bad: Stream, send, timeout_s: float) -> tuple[RequestRecord, list[str]]:
    """The victim stream sent by `send` (the harness's transport) while two other clients misbehave
    on the same server: one sends a frame of an odd byte count, one vanishes after its first chunk.
    Returns the victim's record and what went wrong with the misbehaving clients' answers."""
    url = base_url.replace("http", "ws", 1) + "/v1/audio/stream"
    problems: list[str] = []

    async def odd_frame(session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(url) as ws:
            await ws.send_bytes(bad.audio[:bad.chunk * 2] + b"\x00")
            try:
                raw = await ws.receive(timeout=timeout_s)
            except asyncio.TimeoutError:
                problems.append("a frame of an odd byte count got no answer")
                return
            message = json.loads(raw.data) if raw.type == aiohttp.WSMsgType.TEXT else {}
            if message.get("type") != "error":
                problems.append(f"a frame of an odd byte count was answered {str(raw.data)[:80]!r}, not an error")

    async def vanish(session: aiohttp.ClientSession) -> None:
        ws = await session.ws_connect(url)
        await ws.send_bytes(bad.audio[:bad.chunk * 2])
        await ws.close()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        results = await asyncio.gather(send(session, base_url, victim), odd_frame(session), vanish(session),
                                       return_exceptions=True)
    if isinstance(results[0], BaseException):
        raise results[0]
    for result in results[1:]:
        if isinstance(result, BaseException):
            problems.append(f"a misbehaving client's exchange failed: {type(result).__name__}: {result}")
    return results[0], problems


def wav(stream: Stream) -> bytes:
    """The stream's audio as a WAV file (the offline route's upload)."""
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
        w.writeframes(stream.audio)
    return buf.getvalue()


def offline(base_url: str, stream: Stream, timeout_s: float) -> tuple[str | None, float, str | None]:
    """POST /v1/audio/transcriptions with the whole stream: (text, seconds it took, error)."""
    import time

    import httpx

    started = time.perf_counter()
    try:
        response = httpx.post(base_url + "/v1/audio/transcriptions", timeout=timeout_s,
                              files={"file": (f"{stream.id}.wav", wav(stream), "audio/wav")}, data={"model": "default"})
    except httpx.HTTPError as exc:
        return None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"
    took = time.perf_counter() - started
    if response.status_code != 200:
        return None, took, f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        text = response.json()["text"]
    except (ValueError, KeyError, TypeError):
        return None, took, f"not a transcription: {response.text[:200]}"
    return (text, took, None) if isinstance(text, str) else (None, took, f"text is {text!r}")


def judge_offline(model_dir: Path, stream: Stream, text: str | None, error: str | None) -> PromptVerdict:
    if text is None:
        return PromptVerdict(f"{stream.id}/offline", False, 0, 0, f"offline transcription failed: {error}")
    ref = transcripts(model_dir, stream.audio, [stream.samples])[0]
    return compare_text(f"{stream.id}/offline", ref, text, frozenset(), EOS, max_gap=MAX_GAP)
