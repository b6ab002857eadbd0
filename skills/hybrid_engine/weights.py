"""olmo_hybrid weights -> the runner's fused fp32 matrices.

Accepts both spellings of a checkpoint: the one transformers saves (`attention_layer_norm`,
`feedforward_layer_norm`, and each GatedDeltaNet conv split into `q_conv1d` / `k_conv1d` /
`v_conv1d`, which transformers concatenates on load) and the in-memory module names
(`input_layernorm`, `post_attention_layernorm`, `conv1d`), so a state dict works too.
Per GatedDeltaNet layer the q, k, v, a, b and gate projections become one matrix; per attention
layer q, k, v; per MLP gate and up. Matrices become `Linear`s (linear.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ATTENTION, HybridConfig
from .linear import Linear

RENAMES = (("attention_layer_norm", "input_layernorm"), ("feedforward_layer_norm", "post_attention_layernorm"))


@dataclass(frozen=True)
class LinearLayer:
    """A GatedDeltaNet decoder layer (pre-norm mixer, pre-norm MLP)."""

    input_norm: torch.Tensor
    w_in: Linear  # [q | k | v | a | b | gate, hidden]
    conv: torch.Tensor  # [kernel, conv_dim]: taps first
    a_log: torch.Tensor
    dt_bias: torch.Tensor
    o_norm: torch.Tensor
    w_out: Linear
    post_norm: torch.Tensor
    w_gate_up: Linear
    w_down: Linear


@dataclass(frozen=True)
class AttentionLayer:
    """An attention decoder layer (Olmo: no input norm; norms on the mixer's and the MLP's outputs)."""

    w_qkv: Linear
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    w_out: Linear
    post_attn_norm: torch.Tensor
    w_gate_up: Linear
    w_down: Linear
    post_ff_norm: torch.Tensor


@dataclass(frozen=True)
class Weights:
    embed: torch.Tensor
    layers: tuple[LinearLayer | AttentionLayer, ...]
    norm: torch.Tensor
    lm_head: Linear

    def nbytes(self) -> int:
        parts = [self.embed, self.norm, self.lm_head]
        for layer in self.layers:
            parts += list(vars(layer).values())
        return sum(t.nbytes for t in parts)

    def linears(self) -> list[Linear]:
        """The layers' matrices (not the lm_head)."""
        return [m for layer in self.layers for m in vars(layer).values() if isinstance(m, Linear)]


def canonical(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module names, fp32, the split conv weights concatenated."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        for old, new in RENAMES:
            name = name.replace(old, new)
        out[name] = t.detach().to(torch.float32)
    for name in [n for n in out if n.endswith("linear_attn.q_conv1d.weight")]:
        base = name[: -len("q_conv1d.weight")]
        parts = [out.pop(f"{base}{p}_conv1d.weight") for p in "qkv"]
        out[f"{base}conv1d.weight"] = torch.cat(parts, dim=0)
    return out


def build(cfg: HybridConfig, tensors: dict[str, torch.Tensor], backend: str = "mkl", kernels=None) -> Weights:
    """backend: linear.py's "native" (with `kernels`, the C++ extension), "onednn" or "mkl"."""
    t = canonical(tensors)

    def get(name: str) -> torch.Tensor:
        return t[name].contiguous()

    def linear(*names: str) -> Linear:
        return Linear(torch.cat([get(n) for n in names]), backend, kernels)

    layers = []
    for i, kind in enumerate(cfg.layer_types):
        p = f"model.layers.{i}."
        gate_up = linear(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
        if kind == ATTENTION:
            a = p + "self_attn."
            layers.append(AttentionLayer(
                w_qkv=linear(*(a + f"{x}_proj.weight" for x in "qkv")),
                q_norm=get(a + "q_norm.weight"), k_norm=get(a + "k_norm.weight"), w_out=linear(a + "o_proj.weight"),
                post_attn_norm=get(p + "post_attention_layernorm.weight"), w_gate_up=gate_up,
                w_down=linear(p + "mlp.down_proj.weight"), post_ff_norm=get(p + "post_feedforward_layernorm.weight")))
        else:
            a = p + "linear_attn."
            layers.append(LinearLayer(
                input_norm=get(p + "input_layernorm.weight"),
                w_in=linear(*(a + f"{x}_proj.weight" for x in ("q", "k", "v", "a", "b", "g"))),
                conv=get(a + "conv1d.weight").reshape(cfg.conv_dim, cfg.conv_kernel).t().contiguous(),
                a_log=get(a + "A_log"), dt_bias=get(a + "dt_bias"), o_norm=get(a + "o_norm.weight"),
                w_out=linear(a + "o_proj.weight"), post_norm=get(p + "post_attention_layernorm.weight"),
                w_gate_up=gate_up, w_down=linear(p + "mlp.down_proj.weight")))
    embed = get("model.embed_tokens.weight")
    head = Linear(t.get("lm_head.weight", embed), backend, kernels)
    return Weights(embed, tuple(layers), get("model.norm.weight"), head)
