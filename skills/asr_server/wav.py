"""An uploaded WAV file read into samples, for `POST /v1/audio/transcriptions`: 16 kHz mono PCM16 only."""
from __future__ import annotations

import io
import wave

import numpy as np

from .engine_api import SAMPLE_RATE


class WavError(ValueError):
    """The upload is not a 16 kHz mono PCM16 WAV; the message says what it is instead."""


def pcm16_samples(data: bytes) -> np.ndarray:
    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            pcm = w.readframes(w.getnframes())
    except Exception as exc:  # noqa: BLE001 - the wave module raises what it meets (RuntimeError on a bad chunk)
        raise WavError(f"file: not a readable PCM WAV file ({type(exc).__name__}: {exc or 'empty'})") from None
    wrong = [f"{channels} channels" if channels != 1 else "",
             f"{8 * width}-bit samples" if width != 2 else "",
             f"{rate} Hz" if rate != SAMPLE_RATE else ""]
    if any(wrong):
        raise WavError(f"file: a 16 kHz mono PCM16 WAV is required, this one has "
                       f"{', '.join(w for w in wrong if w)}")
    return np.frombuffer(pcm[:len(pcm) // 2 * 2], "<i2").astype(np.int16)  # a truncated file may end mid-sample
