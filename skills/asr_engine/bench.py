"""In-process comparison: N streams of real speech fed in chunks to the engine, against a
full-recompute loop with transformers generate (every chunk re-encodes the stream's whole buffer
and decodes from scratch, one stream at a time), with the same transcripts checked.

    python -m skills.asr_engine.bench [--streams 4] [--seconds 6] [--chunk-s 1.0] [--threads 1]

Rounds in lockstep: every stream sends its next chunk at once, and a chunk's latency runs from
then until its transcript is back (a stream served later in the round waits for those before it,
as behind any server running one thing at a time). Prints the wall time of each side, their
ratio, per-chunk latency percentiles, the engine's counters and the load average (this machine is
shared: compare ratios from one run, not times across runs).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .config import EngineConfig, token_limit
from .loader import load_engine

FRAME = 320


@dataclass(frozen=True)
class Run:
    name: str
    wall_s: float
    latencies_ms: list[float]
    texts: dict[tuple[int, int], str]  # (stream, chunk) -> transcript
    counters: dict[str, float]

    def line(self) -> str:
        lat = np.array(self.latencies_ms)
        return (f"{self.name:<26} wall {self.wall_s:7.2f} s   chunk latency p50 {np.percentile(lat, 50):7.1f} ms"
                f"  p90 {np.percentile(lat, 90):7.1f} ms  max {lat.max():7.1f} ms")


def load_streams(n: int, seconds: float) -> list[np.ndarray]:
    from harness.assets import ensure_model
    from harness.speech import clips

    pool = [c.samples() for c in clips(ensure_model("speech-clips"))]
    pool.sort(key=len, reverse=True)
    return [pool[i % len(pool)][:int(seconds * 16000)] for i in range(n)]


def ends(audio: np.ndarray, chunk: int) -> list[int]:
    return [min(i + chunk, len(audio)) for i in range(0, len(audio), chunk)]


def run_engine(name: str, model_dir: Path, cfg: EngineConfig, streams: list[np.ndarray], chunk: int) -> Run:
    engine = load_engine(model_dir, cfg)
    cuts = [ends(a, chunk) for a in streams]
    texts, latencies = {}, []
    for i in range(len(streams)):
        engine.open(f"s{i}")
    started = time.perf_counter()
    for c in range(max(len(e) for e in cuts)):
        sent = time.perf_counter()
        for i, (audio, e) in enumerate(zip(streams, cuts)):
            if c < len(e):
                engine.request(f"s{i}", audio[c * chunk:e[c]], _recorder(texts, latencies, (i, c), sent))
        engine.run_until_idle()
    return Run(name, time.perf_counter() - started, latencies, texts, engine.counters())


def _recorder(texts: dict, latencies: list, key: tuple[int, int], sent: float) -> Callable:
    def reply(text) -> None:
        latencies.append((time.perf_counter() - sent) * 1e3)
        texts[key] = text

    return reply


def run_generate(model_dir: Path, streams: list[np.ndarray], chunk: int) -> Run:
    """The baseline: transformers generate on the whole buffer at every chunk."""
    from transformers import AutoModelForSpeechSeq2Seq, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir, dtype=torch.float32).eval()
    cuts = [ends(a, chunk) for a in streams]
    texts, latencies = {}, []
    started = time.perf_counter()
    for c in range(max(len(e) for e in cuts)):
        sent = time.perf_counter()
        for i, (audio, e) in enumerate(zip(streams, cuts)):
            if c < len(e):
                texts[(i, c)] = _generate(model, tok, audio[:e[c] // FRAME * FRAME])
                latencies.append((time.perf_counter() - sent) * 1e3)
    return Run("transformers generate", time.perf_counter() - started, latencies, texts, {})


def _generate(model, tok, samples: np.ndarray) -> str:
    limit = token_limit(len(samples))
    if limit == 0:
        return ""
    audio = torch.from_numpy(samples.astype(np.float32) / 32768.0)[None]
    with torch.inference_mode():
        out = model.generate(audio, attention_mask=torch.ones_like(audio, dtype=torch.long), max_new_tokens=limit,
                             do_sample=False, num_beams=1)
    return tok.decode(out[0, 1:], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="default: the harness's moonshine-streaming-tiny")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--seconds", type=float, default=6.0, help="audio per stream (clips are cut to this)")
    p.add_argument("--chunk-s", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lookup-tokens", type=int, default=EngineConfig.lookup_tokens)
    p.add_argument("--lookup-rows", type=int, default=EngineConfig.lookup_rows)
    p.add_argument("--skip-generate", action="store_true", help="engine runs only (cache on and off)")
    args = p.parse_args(argv)
    if args.model is None:
        from harness.assets import ensure_model

        args.model = ensure_model("moonshine-streaming-tiny")
    torch.set_num_threads(args.threads)
    streams = load_streams(args.streams, args.seconds)
    chunk = round(args.chunk_s * 16000 / FRAME) * FRAME
    print(f"{args.streams} streams x {args.seconds} s, {chunk / 16000} s chunks, {args.threads} thread(s); "
          f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    cfg = EngineConfig(max_streams=args.streams, threads=args.threads, lookup_tokens=args.lookup_tokens,
                       lookup_rows=args.lookup_rows)
    runs = [run_engine("engine-d", args.model, cfg, streams, chunk),
            run_engine("engine-d --no-encoder-cache", args.model, replace(cfg, encoder_cache=False), streams, chunk)]
    if not args.skip_generate:
        runs.append(run_generate(args.model, streams, chunk))
    for run in runs:
        print(run.line())
    base = runs[-1]
    for run in runs[:-1]:
        same = sum(run.texts[k] == base.texts[k] for k in base.texts)
        print(f"{run.name}: {base.wall_s / run.wall_s:.2f}x faster than {base.name}; "
              f"transcripts equal to its: {same}/{len(base.texts)}")
    c = runs[0].counters
    print("engine-d counters:", {k: c[k] for k in ("encoder_frames_computed", "encoder_frames_reused",
                                                   "draft_tokens_proposed", "draft_tokens_accepted",
                                                   "lookup_tokens_proposed", "lookup_tokens_accepted", "decode_steps",
                                                   "decode_rows", "chunks")})
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
