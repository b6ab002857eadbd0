"""Build the model from transformers-named weights (a safetensors folder or a state dict).

q/k/v and gate/up are concatenated here so each layer runs two matmuls fewer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import ModelConfig
from .layers import Rotary
from .model import CausalLM


def read_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(model_dir / name)))
    return tensors


def build_model(cfg: ModelConfig, hf_tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> CausalLM:
    with torch.device("meta"):
        model = CausalLM(cfg)
    model.load_state_dict(convert(cfg, hf_tensors, dtype), strict=True, assign=True)
    model.rotary = Rotary(cfg.rope, cfg.head_dim, cfg.max_position)
    model.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return model.eval().requires_grad_(False)


def convert(cfg: ModelConfig, hf: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    def get(name: str) -> torch.Tensor:
        return hf[name].to(dtype)

    out = {"embed.weight": get("model.embed_tokens.weight"), "norm.weight": get("model.norm.weight")}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = get("lm_head.weight")
    for i in range(cfg.num_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        attn, mlp = src + "self_attn.", src + "mlp."
        out[dst + "input_norm.weight"] = get(src + "input_layernorm.weight")
        out[dst + "post_norm.weight"] = get(src + "post_attention_layernorm.weight")
        out[dst + "mixer.qkv.weight"] = torch.cat([get(attn + f"{p}_proj.weight") for p in "qkv"])
        out[dst + "mixer.o.weight"] = get(attn + "o_proj.weight")
        out[dst + "mlp.gate_up.weight"] = torch.cat([get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")])
        out[dst + "mlp.down.weight"] = get(mlp + "down_proj.weight")
        if cfg.attention_bias:
            out[dst + "mixer.qkv.bias"] = torch.cat([get(attn + f"{p}_proj.bias") for p in "qkv"])
            out[dst + "mixer.o.bias"] = get(attn + "o_proj.bias")
        if cfg.mlp_bias:
            out[dst + "mlp.gate_up.bias"] = torch.cat([get(mlp + "gate_proj.bias"), get(mlp + "up_proj.bias")])
            out[dst + "mlp.down.bias"] = get(mlp + "down_proj.bias")
    return {k: v.contiguous() for k, v in out.items()}
