"""Build an engine from a local model folder: config, tokenizer and weights via transformers /
safetensors, everything else ours."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from .config import ModelConfig
from .engine import EngineConfig, LLMEngine
from .kernels import Kernels
from .packing import SMALL_ROWS, can_pack
from .runner import ModelRunner
from .weights import build_model, read_safetensors

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def load_engine(model_dir: Path, cfg: EngineConfig, speculator=None) -> LLMEngine:
    """speculator: see LLMEngine (skills/speculative_decoding's Speculator); None: no speculation."""
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    model_cfg = ModelConfig.from_hf(hf_config)
    dtype = DTYPES[cfg.dtype]
    model = build_model(model_cfg, read_safetensors(model_dir), dtype)
    if cfg.pack_weights and can_pack(dtype):
        model.pack()
        if cfg.few_row_matmul != "small_gemm" and Kernels.rows_alone(dtype):
            k = getattr(getattr(speculator, "cfg", None), "num_speculative_tokens", None)
            rows = k + 1 if k is not None else cfg.max_num_seqs  # a verify chunk, else a batch of decodes
            choice = model.choose_few_row_matmul(min(rows, SMALL_ROWS), cfg.few_row_matmul)
            log.info("few-row matmul: %s (%s)", choice.kernel, choice.reason)
    if hasattr(speculator, "matmul_chosen"):
        speculator.matmul_chosen("onednn" if model.onednn_rows_invariant else "small_gemm")
        log.info("speculation: K = %d", speculator.cfg.num_speculative_tokens)
    max_len = min(cfg.max_model_len, model_cfg.max_position)
    if max_len != cfg.max_model_len:
        cfg = EngineConfig(**{**cfg.__dict__, "max_model_len": max_len})
    rows = getattr(speculator, "verify_rows", None) or 0
    if rows and cfg.max_model_len + rows > model_cfg.max_position:  # verify rows past the end need rope positions
        cfg = EngineConfig(**{**cfg.__dict__, "max_model_len": model_cfg.max_position - rows})
    runner = ModelRunner(model, cfg.max_num_seqs, cfg.max_model_len, dtype,
                         key_block=getattr(speculator, "key_block", 0) or 0, query_rows=rows)
    if cfg.compile:
        runner.compile(cfg.compile)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    engine = LLMEngine(runner, tokenizer, eos_ids(model_dir, hf_config, tokenizer), cfg, speculator)
    engine.warmup()
    log.info("engine ready in %.1fs: %s, %d threads, state pool %.2f GiB, %s", time.perf_counter() - started,
             cfg.dtype, torch.get_num_threads(), runner.pool.nbytes() / 2**30, cfg)
    return engine


def eos_ids(model_dir: Path, hf_config, tokenizer) -> frozenset[int]:
    gen = model_dir / "generation_config.json"
    values = [json.loads(gen.read_text()).get("eos_token_id")] if gen.is_file() else []
    return token_id_set(*values, getattr(hf_config.get_text_config(), "eos_token_id", None), tokenizer.eos_token_id)


def token_id_set(*values) -> frozenset[int]:
    """The EOS ids a model declares, each place as an int, a list of ints, or None."""
    ids: set[int] = set()
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the model defines no EOS token")
    return frozenset(ids)
