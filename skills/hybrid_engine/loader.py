"""Build the engine from a local olmo_hybrid folder: config and tokenizer via transformers, weights
via safetensors, the row padding checked on this machine, then a warm-up."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from skills.engine_core.loader import default_threads, eos_ids
from skills.engine_core.weights import read_safetensors

from .config import EngineConfig, HybridConfig
from .engine import HybridEngine
from .kernels import kernels
from .linear import backend_for
from .model import HybridModel
from .reuse import PrefixReuse
from .rows import RowPadding, settle
from .runner import Runner
from .state import SlotStates
from .weights import build

log = logging.getLogger(__name__)


def load_engine(model_dir: Path, cfg: EngineConfig, warmup: bool = True) -> HybridEngine:
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads or default_threads())
    hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    model_cfg = HybridConfig.from_hf(hf_config)
    ops, kernel_name = kernels(cfg.native_kernels)
    weights = build(model_cfg, read_safetensors(Path(model_dir)), backend_for(ops), ops)
    padding = RowPadding(cfg.min_rows) if cfg.min_rows else settle(
        weights.linears(), cfg.max_num_batched_tokens, weights.lm_head, max(cfg.max_num_seqs, 16))
    max_len = min(cfg.max_model_len, model_cfg.max_position)
    model = HybridModel(model_cfg, weights, ops, padding, max_len, cfg.greedy_screen if cfg.greedy_head else None,
                        cfg.layer_loop)
    states = SlotStates.allocate(model_cfg, cfg.max_num_seqs, max_len)
    reuse = PrefixReuse(states, cfg.prefix_cache, cfg.state_block, cfg.cache_bytes, cfg.wait_for_shared)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    share = cfg.share_prefix_reads and kernel_name == "native"
    engine = HybridEngine(Runner(model_cfg, model, states, share), reuse, tokenizer,
                          eos_ids(Path(model_dir), hf_config, tokenizer), cfg, max_len)
    engine.runtime = {"kernels": kernel_name, "split_invariant": kernel_name == "native",
                      "matmul": weights.lm_head.kind, "shared_prefix_reads": share,
                      "row_padding": padding.to_json(), "prefix_cache": cfg.prefix_cache,
                      "state_block": cfg.state_block, "dtype": "float32", "threads": torch.get_num_threads(),
                      "greedy_head": model.greedy_head is not None, "layer_loop": model.layer_loop is not None,
                      "greedy_screen": model.greedy_head.screen_kind if model.greedy_head else None,
                      "weight_dtypes": sorted({m.weight_dtype for m in [*weights.linears(), weights.lm_head]})}
    if warmup:
        engine.warmup()
    log.info("engine ready in %.1fs: %s kernels, %s matmuls, rows padded %s, %d threads, slot state %.2f GiB, "
             "weights %.0f MB, %s", time.perf_counter() - started, kernel_name, weights.lm_head.kind,
             padding.to_json(), torch.get_num_threads(),
             states.nbytes() / 2**30, weights.nbytes() / 1e6, cfg)
    return engine

