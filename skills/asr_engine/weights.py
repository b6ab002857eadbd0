"""moonshine_streaming decoder weights as plain fp32 tensors, and the rotary tables."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skills.encoder_cache.cross_kv import CrossProjection


@dataclass(frozen=True)
class DecoderLayerWeights:
    self_norm: torch.Tensor
    w_qkv: torch.Tensor  # [q | k | v, hidden]
    w_o: torch.Tensor
    cross_norm: torch.Tensor
    cross_q: torch.Tensor  # cross-attention K/V live in skills/encoder_cache's CrossKV
    cross_o: torch.Tensor
    mlp_norm: torch.Tensor
    fc1_w: torch.Tensor  # [up | gate, hidden]: silu(gate) * up
    fc1_b: torch.Tensor
    fc2_w: torch.Tensor
    fc2_b: torch.Tensor


@dataclass(frozen=True)
class Rotary:
    """Partial interleaved rotary embedding (transformers' apply_rotary_pos_emb for this model):
    the first `dim` channels of a head rotate in adjacent pairs."""

    cos: torch.Tensor  # [max_positions, dim]
    sin: torch.Tensor

    @property
    def dim(self) -> int:
        return self.cos.shape[1]

    @classmethod
    def build(cls, inv_freq: torch.Tensor, max_positions: int) -> "Rotary":
        """From the model's inverse frequencies (one per rotated pair), as transformers computes them."""
        freqs = torch.arange(max_positions).float()[:, None] * inv_freq.float()[None, :]
        return cls(freqs.cos().repeat_interleave(2, dim=-1), freqs.sin().repeat_interleave(2, dim=-1))

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [..., heads, head_dim] at `positions` (x's leading shape)."""
        cos, sin = self.cos[positions][..., None, :], self.sin[positions][..., None, :]
        rot, rest = x[..., :self.dim], x[..., self.dim:]
        pairs = rot.unflatten(-1, (-1, 2))
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return torch.cat([rot * cos + turned * sin, rest], dim=-1)


@dataclass(frozen=True)
class DecoderWeights:
    embed: torch.Tensor  # [vocab, hidden]
    layers: tuple[DecoderLayerWeights, ...]
    norm: torch.Tensor
    lm_head: torch.Tensor  # [vocab, hidden]
    rotary: Rotary
    cross: CrossProjection
    heads: int
    head_dim: int
    norm_eps: float

    @classmethod
    def from_hf(cls, model) -> "DecoderWeights":
        """From a transformers MoonshineStreamingForConditionalGeneration."""
        cfg, dec = model.config, model.model.decoder
        if cfg.num_key_value_heads != cfg.num_attention_heads or cfg.attention_bias:
            raise ValueError("only plain multi-head decoder attention without biases is implemented")
        if cfg.hidden_act != "silu" or getattr(cfg, "pad_head_dim_to_multiple_of", None):
            raise ValueError("only the SiLU-gated decoder MLP with unpadded heads is implemented")
        rope = dict(cfg.rope_parameters)
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"only default rope is implemented, not {rope}")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

        def plain(t: torch.Tensor) -> torch.Tensor:
            return t.detach().float().contiguous()

        layers = tuple(
            DecoderLayerWeights(
                self_norm=plain(layer.input_layernorm.weight),
                w_qkv=plain(torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight,
                                       layer.self_attn.v_proj.weight])),
                w_o=plain(layer.self_attn.o_proj.weight),
                cross_norm=plain(layer.post_attention_layernorm.weight),
                cross_q=plain(layer.encoder_attn.q_proj.weight), cross_o=plain(layer.encoder_attn.o_proj.weight),
                mlp_norm=plain(layer.final_layernorm.weight),
                fc1_w=plain(layer.mlp.fc1.weight), fc1_b=plain(layer.mlp.fc1.bias),
                fc2_w=plain(layer.mlp.fc2.weight), fc2_b=plain(layer.mlp.fc2.bias),
            )
            for layer in dec.layers
        )
        cross = CrossProjection(
            position=plain(dec.pos_emb.weight),
            proj=plain(dec.proj.weight) if isinstance(dec.proj, torch.nn.Linear) else None,
            w_kv=plain(torch.cat([w for layer in dec.layers
                                  for w in (layer.encoder_attn.k_proj.weight, layer.encoder_attn.v_proj.weight)])),
            layers=len(dec.layers), heads=cfg.num_attention_heads, head_dim=head_dim)
        return cls(
            embed=plain(dec.embed_tokens.weight), layers=layers, norm=plain(dec.norm.weight),
            lm_head=plain(model.proj_out.weight),
            rotary=Rotary.build(dec.rotary_emb.inv_freq, cfg.max_position_embeddings),
            cross=cross, heads=cfg.num_attention_heads, head_dim=head_dim, norm_eps=dec.norm.eps,
        )
