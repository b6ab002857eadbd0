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
from .kernels import Kernels, small_gemm_on_amx
from .packing import SMALL_ROWS, can_pack
from .row_invariance import first_choice, flat_in_rows, has_amx, small_gemm_rows
from .runner import ModelRunner
from .step_invariance import check_steps
from .weights import build_model, read_safetensors

log = logging.getLogger(__name__)
# Steps of up to this many rows decide whether oneDNN may be the few-row matmul: engine-b's
# largest verify chunk (K = 12, plus its last token).
PROBE_ROWS = 13

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def default_threads() -> int:
    """torch threads when none are asked for: the CPUs this process may run on (a taskset or a
    container's cpuset narrows them, and os.cpu_count() counts every CPU online), or every CPU
    where the system has no affinity mask (macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_engine(model_dir: Path, cfg: EngineConfig, speculator=None) -> LLMEngine:
    """speculator: see LLMEngine (skills/speculative_decoding's Speculator); None: no speculation."""
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads or default_threads())
    hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    model_cfg = ModelConfig.from_hf(hf_config)
    dtype = DTYPES[cfg.dtype]
    model = build_model(model_cfg, read_safetensors(model_dir), dtype)
    first, kernel_check, small_amx = None, None, small_gemm_on_amx()
    if cfg.pack_weights and can_pack(dtype):
        model.pack()
        if Kernels.rows_alone(dtype):
            first = first_choice(cfg.few_row_matmul, model.has_small_matmuls, small_amx=small_amx)
            model.use_few_row_matmul(first)
            kernel_check = settle_few_row_matmul(model, cfg, dtype)
            rows_cap = small_gemm_rows(cfg.small_gemm_rows, small_amx=small_amx)
            if rows_cap is not None and model.few_row_kernel == "small_gemm":
                model.limit_small_gemm_rows(rows_cap)
    runner, speculator, check = checked_runner(model, cfg, dtype, speculator, small_amx)
    model.drop_unused_copies()
    cfg = runner.engine_cfg
    if cfg.compile:
        runner.compile(cfg.compile)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    engine = LLMEngine(runner, tokenizer, eos_ids(model_dir, hf_config, tokenizer), cfg, speculator)
    engine.runtime = {"dtype": cfg.dtype, "few_row_matmul": model.few_row_kernel,
                      "few_row_matmul_first": first, "cpu_amx": has_amx(), "small_gemm_amx": small_amx,
                      "small_gemm_rows": model.small_rows, "onednn_dtype": model.onednn_dtype,
                      "few_row_matmul_check": kernel_check.to_json() if kernel_check else None,
                      "speculation": ({"num_speculative_tokens": speculator.cfg.num_speculative_tokens}
                                      if hasattr(speculator, "cfg") else speculator is not None),
                      "verify_check": check.to_json() if check else None, "stream_interval": cfg.stream_interval,
                      "greedy_screen": cfg.greedy_screen and getattr(model.lm_head, "screen", None) is not None}
    engine.warmup()
    log.info("engine ready in %.1fs: %s, %d threads, state pool %.2f GiB, %s", time.perf_counter() - started,
             cfg.dtype, torch.get_num_threads(), runner.pool.nbytes() / 2**30, cfg)
    return engine


def settle_few_row_matmul(model, cfg: EngineConfig, dtype: torch.dtype):
    """Keep oneDNN as the few-row matmul only where steps of up to PROBE_ROWS rows give one-token
    decodes' numbers through this model's forward on this machine; else small_gemm. Every engine
    decides so, speculating or not, so that an engine and its twin without speculation (the
    lossless oracle's other side) always decode with the same matmul. Returns the check, or None
    where there was nothing to decide (small_gemm first, or the only one)."""
    if model.few_row_kernel != "onednn" or not model.can_use_small_gemm:
        return None
    check = check_steps(_runner(model, cfg, dtype, None), PROBE_ROWS)
    if not check.ok:
        log.warning("few-row matmul: oneDNN %s; small_gemm instead", check.detail)
        model.use_few_row_matmul("small_gemm")
    return check


def checked_runner(model, cfg: EngineConfig, dtype: torch.dtype, speculator, small_amx: bool):
    """The runner, and the speculator it may use. Where verify chunks attend row by row, they are
    checked against one-token decodes through this runner's forward (step_invariance.py), for every
    row count a step can take; where they do not, speculation is switched off (plain decoding is
    lossless by definition). The matmul is not changed here: settle_few_row_matmul chose it, as
    it does for an engine without speculation. Verify chunks that do not attend row by row (no C++
    kernels, or fp32) are checked the same way: their padded matmuls are no more row-invariant.
    Returns (runner, speculator or None, the check or None where none ran)."""
    if hasattr(speculator, "matmul_chosen"):
        speculator.matmul_chosen(flat_in_rows(model.few_row_kernel, small_amx=small_amx))
    runner = _runner(model, cfg, dtype, speculator)
    if speculator is None:
        return runner, speculator, None
    k = getattr(getattr(speculator, "cfg", None), "num_speculative_tokens", SMALL_ROWS - 1)
    started = time.perf_counter()
    check = check_steps(runner, min(cfg.max_num_seqs * (k + 1), SMALL_ROWS))
    took = time.perf_counter() - started
    if check.ok:
        runner.verified_rows = check.rows
        log.info("verify steps, %s matmul: %s (checked in %.1f s)", model.few_row_kernel, check.detail, took)
        return runner, speculator, check
    log.warning("verify steps, %s matmul: %s (checked in %.1f s)", model.few_row_kernel, check.detail, took)
    log.warning("speculation off: verify steps here do not give the numbers of one-token decodes")
    return _runner(model, cfg, dtype, None), None, check


def _runner(model, cfg: EngineConfig, dtype: torch.dtype, speculator) -> ModelRunner:
    """A runner (and its state pool) sized for the speculator's verify shape; `runner.engine_cfg` is
    `cfg` with max_model_len cut to what the model's positions allow."""
    max_position = model.cfg.max_position
    max_len = min(cfg.max_model_len, max_position)
    rows = getattr(speculator, "verify_rows", None) or 0
    if rows and max_len + rows > max_position:  # verify rows past the end need rope positions
        max_len = max_position - rows
    if max_len != cfg.max_model_len:
        cfg = EngineConfig(**{**cfg.__dict__, "max_model_len": max_len})
    runner = ModelRunner(model, cfg.max_num_seqs, cfg.max_model_len, dtype,
                         key_block=getattr(speculator, "key_block", 0) or 0, query_rows=rows)
    runner.engine_cfg = cfg
    return runner


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
