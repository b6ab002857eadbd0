"""moonshine_streaming encoder weights, taken out of the transformers module as plain fp32 tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EncoderLayerWeights:
    attn_norm: torch.Tensor  # gamma + 1 (the model's unit-offset LayerNorm), [hidden]
    w_q: torch.Tensor  # [heads * head_dim, hidden]
    w_kv: torch.Tensor  # [k | v, hidden]
    w_o: torch.Tensor
    mlp_norm: torch.Tensor
    fc1_w: torch.Tensor
    fc1_b: torch.Tensor
    fc2_w: torch.Tensor
    fc2_b: torch.Tensor


@dataclass(frozen=True)
class EncoderWeights:
    comp_k: float  # asinh compression: asinh(k * x)
    embed: torch.Tensor  # [hidden, frame_len]
    conv1_w: torch.Tensor  # [out, kernel * in]: taps first, so a gathered window of rows flattens onto it
    conv1_b: torch.Tensor
    conv2_w: torch.Tensor
    conv2_b: torch.Tensor
    layers: tuple[EncoderLayerWeights, ...]
    final_norm: torch.Tensor
    num_heads: int
    head_dim: int
    norm_eps: float = 1e-5

    @property
    def hidden(self) -> int:
        return self.embed.shape[0]

    @classmethod
    def from_hf(cls, encoder) -> "EncoderWeights":
        """From a transformers MoonshineStreamingEncoder."""
        cfg = encoder.config
        if getattr(cfg, "attention_bias", False):
            raise ValueError("encoder attention biases are not implemented")
        if cfg.hidden_act != "gelu":
            raise ValueError(f"only the erf GELU encoder MLP is implemented, not {cfg.hidden_act}")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if cfg.num_key_value_heads != cfg.num_attention_heads:
            raise ValueError("grouped-query encoder attention is not implemented")

        def plain(t: torch.Tensor) -> torch.Tensor:
            return t.detach().float().contiguous()

        def conv(c) -> torch.Tensor:  # [out, in, kernel] -> [out, kernel * in]
            return plain(c.weight.permute(0, 2, 1).reshape(c.weight.shape[0], -1))

        layers = tuple(
            EncoderLayerWeights(
                attn_norm=plain(layer.input_layernorm.gamma + layer.input_layernorm.unit_offset),
                w_q=plain(layer.self_attn.q_proj.weight),
                w_kv=plain(torch.cat([layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight])),
                w_o=plain(layer.self_attn.o_proj.weight),
                mlp_norm=plain(layer.post_attention_layernorm.gamma + layer.post_attention_layernorm.unit_offset),
                fc1_w=plain(layer.mlp.fc1.weight), fc1_b=plain(layer.mlp.fc1.bias),
                fc2_w=plain(layer.mlp.fc2.weight), fc2_b=plain(layer.mlp.fc2.bias),
            )
            for layer in encoder.layers
        )
        emb = encoder.embedder
        return cls(
            comp_k=float(torch.exp(emb.comp.log_k).item()), embed=plain(emb.linear.weight),
            conv1_w=conv(emb.conv1), conv1_b=plain(emb.conv1.bias),
            conv2_w=conv(emb.conv2), conv2_b=plain(emb.conv2.bias),
            layers=layers, final_norm=plain(encoder.final_norm.gamma + encoder.final_norm.unit_offset),
            num_heads=cfg.num_attention_heads, head_dim=head_dim, norm_eps=encoder.final_norm.ln.eps,
        )
