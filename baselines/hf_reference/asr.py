"""hf-reference for speech: `FullRecompute`, a StreamingTranscriber (skills/asr_server) that keeps
each stream's whole audio and, at every chunk, encodes all of it again and decodes from scratch
with plain transformers `generate`, one job at a time on one worker thread. The study's "full
recompute" baseline for setting D: it keeps no encoder state, so it reuses no frame.

The transcript rule, restated here as baselines do not import the harness (harness/transcription.py
defines it): greedy decoding on the encoder's output for the first `n // 320 * 320` samples, as
float32 / 32768 with an all-ones attention mask (without one, moonshine_streaming's encoder
ignores its sliding windows), until end-of-sequence or `usable * 13 // 32000` new tokens.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSpeechSeq2Seq, AutoTokenizer

from .loader import DTYPES, resolve_device

log = logging.getLogger(__name__)

RATE = 16000
FRAME = 320  # samples per encoder output frame (20 ms)
TOKENS_PER_SECOND_X2 = 13  # 6.5 new tokens per audio second, in integers


def usable(n: int) -> int:
    return n // FRAME * FRAME


def token_limit(n: int) -> int:
    return usable(n) * TOKENS_PER_SECOND_X2 // (2 * RATE)


def encoded_frames(n: int) -> int:
    """Encoder frames a transcript of n samples computes (none when it may say nothing)."""
    return usable(n) // FRAME if token_limit(n) else 0


@dataclass(frozen=True)
class SpeechModel:
    model: torch.nn.Module
    tokenizer: object

    def transcript(self, samples: np.ndarray) -> str:
        """The transcript of int16 samples by the rule above."""
        n, limit = usable(len(samples)), token_limit(len(samples))
        if limit == 0:
            return ""
        audio = torch.from_numpy(samples[:n].astype(np.float32) / 32768.0)[None]
        audio = audio.to(self.model.device, self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(audio, attention_mask=torch.ones(audio.shape, dtype=torch.long,
                                                                       device=audio.device),
                                      max_new_tokens=limit, do_sample=False, num_beams=1)
        return self.tokenizer.decode(out[0].tolist(), skip_special_tokens=True)


def load_speech_model(model_dir: Path, dtype: str, device: str = "auto") -> SpeechModel:
    started = time.perf_counter()
    model = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir, dtype=DTYPES[dtype], local_files_only=True)
    model.to(resolve_device(device)).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    log.info("loaded %s (%s, %s on %s) in %.1fs", model_dir, type(model).__name__, model.dtype, model.device,
             time.perf_counter() - started)
    return SpeechModel(model, tokenizer)


@dataclass
class StreamAudio:
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    transcribed: int = -1  # samples the last transcript covered (-1: none yet)
    text: str = ""


class FullRecompute:
    def __init__(self, speech: SpeechModel) -> None:
        self.speech = speech
        self._streams: dict[str, StreamAudio] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")
        self._frames_computed = 0  # written by the worker thread only

    def open(self, stream: str) -> None:
        self._streams[stream] = StreamAudio()

    async def feed(self, stream: str, samples: np.ndarray) -> str:
        audio = self._streams[stream]
        audio.samples = np.concatenate([audio.samples, samples])
        return await self._transcribe_stream(audio)

    async def finalize(self, stream: str) -> str:
        audio = self._streams[stream]
        if audio.transcribed == len(audio.samples):  # the last partial already covered all of it
            return audio.text
        return await self._transcribe_stream(audio)

    def close(self, stream: str) -> None:
        self._streams.pop(stream, None)

    async def transcribe(self, samples: np.ndarray) -> str:
        return await self._run(samples)

    def counters(self) -> dict[str, float]:
        return {"encoder_frames_computed": self._frames_computed, "encoder_frames_reused": 0}

    async def _transcribe_stream(self, audio: StreamAudio) -> str:
        samples = audio.samples
        text = await self._run(samples)
        audio.transcribed, audio.text = len(samples), text
        return text

    async def _run(self, samples: np.ndarray) -> str:
        return await asyncio.wrap_future(self._worker.submit(self._job, samples))

    def _job(self, samples: np.ndarray) -> str:
        self._frames_computed += encoded_frames(len(samples))
        return self.speech.transcript(samples)
