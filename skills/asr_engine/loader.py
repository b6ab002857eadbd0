"""A moonshine_streaming checkpoint -> a warmed-up AsrEngine (on the calling thread)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from skills.encoder_cache import EncoderGeometry, EncoderWeights, IncrementalEncoder

from .config import EngineConfig
from .decoder import Decoder
from .engine import AsrEngine, Model
from .weights import DecoderWeights

log = logging.getLogger(__name__)
WARMUP_SECONDS = (1.0, 2.0)  # a stream fed these chunks, and a second one alone


def load_model(model_dir: Path, screened_head: bool = True) -> Model:
    from transformers import AutoConfig, AutoModelForSpeechSeq2Seq, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != "moonshine_streaming":
        raise ValueError(f"{model_dir} is {config.model_type!r}; this engine runs moonshine_streaming")
    hf = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir, dtype=torch.float32).eval()
    encoder = IncrementalEncoder(EncoderWeights.from_hf(hf.model.encoder),
                                 EncoderGeometry.from_hf(config.encoder_config))
    eos = hf.generation_config.eos_token_id
    eos = frozenset(eos if isinstance(eos, list) else [eos])
    start = hf.generation_config.decoder_start_token_id
    start = config.decoder_start_token_id if start is None else start
    decoder = Decoder(DecoderWeights.from_hf(hf), screened_head)
    return Model(encoder, decoder, AutoTokenizer.from_pretrained(model_dir), int(start), eos)


def load_engine(model_dir: Path, cfg: EngineConfig) -> AsrEngine:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    engine = AsrEngine(load_model(Path(model_dir), cfg.screened_head), cfg)
    warm_up(engine)
    return engine


def warm_up(engine: AsrEngine) -> None:
    """Every kind of step once (a fresh stream, a growing one, a verify beside a decode), then the
    counters start at zero."""
    rng = np.random.default_rng(0)
    streams = [f"\0warmup-{i}" for i in range(len(WARMUP_SECONDS))]
    for stream in streams:
        engine.open(stream)
    for _ in range(2):
        for stream, seconds in zip(streams, WARMUP_SECONDS):
            audio = (rng.standard_normal(int(seconds * 16000)) * 3000).astype(np.int16)
            engine.request(stream, audio, lambda result: None)
        engine.run_until_idle()
    for stream in streams:
        engine.close(stream)
    engine.run_until_idle()
    engine.stats = type(engine.stats)()
    log.info("asr engine warmed up")
