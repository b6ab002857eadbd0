"""Loading a local transformers model folder (never the hub)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from skills.engine_core.loader import token_id_set

log = logging.getLogger(__name__)

DTYPES: dict[str, str | torch.dtype] = {"auto": "auto", "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    eos_ids: frozenset[int]
    pad_id: int
    max_model_len: int
    vocab_size: int


def load_model(model_dir: Path, dtype: str, device: str = "auto") -> LoadedModel:
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype], local_files_only=True)
    model.to(resolve_device(device)).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = _first_int(model.generation_config.pad_token_id, tokenizer.pad_token_id, min(eos_ids))
    # Every request sets its own sampling; a model's generation_config.json defaults
    # (temperature, top_p, ...) must not leak into the reference.
    model.generation_config = GenerationConfig(
        bos_token_id=model.generation_config.bos_token_id, eos_token_id=sorted(eos_ids), pad_token_id=pad_id
    )
    text_config = model.config.get_text_config()
    max_model_len = getattr(text_config, "max_position_embeddings", None) or tokenizer.model_max_length
    loaded = LoadedModel(model, tokenizer, eos_ids, pad_id, int(max_model_len), int(text_config.vocab_size))
    log.info("loaded %s (%s, %s on %s) in %.1fs; max_model_len=%d eos=%s", model_dir, type(model).__name__,
             model.dtype, model.device, time.perf_counter() - started, loaded.max_model_len, sorted(eos_ids))
    return loaded


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _eos_ids(model, tokenizer) -> frozenset[int]:
    return token_id_set(model.generation_config.eos_token_id, model.config.get_text_config().eos_token_id,
                        tokenizer.eos_token_id)


def _first_int(*values: object) -> int:
    for value in values:
        if isinstance(value, int):
            return value
        if isinstance(value, (list, tuple)) and value:
            return int(value[0])
    raise ValueError("no pad token")
