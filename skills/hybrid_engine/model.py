"""The olmo_hybrid forward over a step's packed rows, in fp32.

Matmuls are linear.py's (the C++ panel kernel, or oneDNN / MKL without it), every one at a row
count that rows.py found bit-stable; everything between them is a row kernel (kernels.py).
GatedDeltaNet layers: pre-norm, fused q|k|v|a|b|gate projection, the delta-rule kernel (conv,
recurrence, gated norm) on each sequence's segment from its slot state, output projection,
residual; pre-norm SwiGLU MLP. Attention layers (Olmo 3 style): q|k|v projection of the residual
stream itself, q/k norms and rope, K/V into the slot pool, causal row attention, output
projection, then RMSNorm of the mixer's output before the residual add; the MLP likewise
post-normed. With the C++ kernels the layers run as one call (kernels.cpp `LayerLoop`: the same
kernels in the same order), not a Python call per kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batch import StepBatch
from .config import HybridConfig
from .greedy_head import GreedyHead
from .linear import Linear
from .rows import RowPadding
from .state import SaveBuffers, SlotStates
from .weights import AttentionLayer, Weights


GDN_EPS = 1e-5  # the GatedDeltaNet output norm's epsilon


def layer_loop_for(weights: Weights, kernels):
    """kernels.cpp's LayerLoop over the model's layers, or None where the kernels or a matrix are not
    the C++ ones."""
    if not hasattr(kernels, "LayerLoop") or any(m.kind != "native" for m in weights.linears()):
        return None
    loop = kernels.LayerLoop()
    for layer in weights.layers:
        if isinstance(layer, AttentionLayer):
            loop.add_attention(*_panels(layer.w_qkv), layer.q_norm, layer.k_norm, *_panels(layer.w_out),
                               layer.post_attn_norm, *_panels(layer.w_gate_up, layer.w_down), layer.post_ff_norm)
        else:
            loop.add_linear(layer.input_norm, *_panels(layer.w_in), layer.conv, layer.a_log, layer.dt_bias,
                            layer.o_norm, *_panels(layer.w_out), layer.post_norm,
                            *_panels(layer.w_gate_up, layer.w_down))
    return loop


def _panels(*matrices: Linear) -> list:
    """Each matrix as the C++ loop takes it: its packed panels, its output features."""
    return [part for m in matrices for part in (m.packed, m.out_features)]


def rope_tables(cfg: HybridConfig, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [positions, head_dim / 2] in fp32, as transformers' default rope computes them."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float) / cfg.head_dim))
    freqs = torch.arange(positions, dtype=torch.long).float()[:, None] * inv[None, :]
    return freqs.cos().contiguous(), freqs.sin().contiguous()


class HybridModel:
    def __init__(self, cfg: HybridConfig, weights: Weights, kernels, padding: RowPadding, max_len: int,
                 greedy_head: str | None = None, layer_loop: bool = True) -> None:
        self.cfg = cfg
        self.w = weights
        self.k = kernels
        self.padding = padding
        self.cos, self.sin = rope_tables(cfg, max_len)
        self.scale = cfg.head_dim ** -0.5
        # The argmax without reading the fp32 head, where that is exact here (greedy_head.py).
        # `greedy_head`: the screen asked for ("int8" or "bf16"), None for the fp32 head.
        self.greedy_head = GreedyHead.build(weights.lm_head, kernels, greedy_head) if greedy_head else None
        self.layer_loop = layer_loop_for(weights, kernels) if layer_loop else None

    @torch.inference_mode()
    def forward(self, batch: StepBatch, states: SlotStates, saves: SaveBuffers,
                greedy: bool = False) -> torch.Tensor | list[int]:
        """Logits [len(batch.sample_rows), vocab] of the sample rows, or with `greedy` and a greedy head
        their argmax token ids; states updated in place."""
        cfg, k, eps = self.cfg, self.k, self.cfg.rms_eps
        x = F.embedding(batch.ids, self.w.embed)
        if self.layer_loop is not None:
            x = self.layer_loop.forward(x, self.cos, self.sin, batch.slots, batch.positions, batch.share_slot,
                                        batch.share_len, batch.seg_slot, batch.seg_start, batch.seg_len,
                                        batch.save_rows, states.keys, states.values, states.conv, states.recurrent,
                                        saves.conv, saves.recurrent, cfg.num_heads, cfg.key_heads, eps, GDN_EPS,
                                        self.scale)
        else:
            x = self.layers(x, batch, states, saves)
        h = k.rms_norm(x.index_select(0, batch.sample_rows), self.w.norm, eps)
        if greedy and self.greedy_head is not None:
            ids = self.greedy_head.ids(h)
            if ids is not None:
                return ids
        return self.logits(h)

    def layers(self, x: torch.Tensor, batch: StepBatch, states: SlotStates, saves: SaveBuffers) -> torch.Tensor:
        """The decoder layers from Python, a call per kernel (the torch fallback, or `layer_loop` off)."""
        cfg, k, eps = self.cfg, self.k, self.cfg.rms_eps
        gdn_i = attn_i = 0
        for layer in self.w.layers:
            if isinstance(layer, AttentionLayer):
                kp, vp = states.keys[attn_i], states.values[attn_i]
                q = k.attn_prep(layer.w_qkv(x), layer.q_norm, layer.k_norm, self.cos, self.sin, batch.slots,
                                batch.positions, kp, vp, cfg.num_heads, eps)
                mixed = k.row_attention(q, kp, vp, batch.slots, batch.positions, batch.share_slot,
                                        batch.share_len, self.scale)
                x = x + k.rms_norm(layer.w_out(mixed), layer.post_attn_norm, eps)
                mlp = layer.w_down(k.silu_mul(layer.w_gate_up(x)))
                x = x + k.rms_norm(mlp, layer.post_ff_norm, eps)
                attn_i += 1
            else:
                proj = layer.w_in(k.rms_norm(x, layer.input_norm, eps))
                mixed = k.gdn(proj, layer.conv, layer.a_log, layer.dt_bias, layer.o_norm, states.conv[gdn_i],
                              states.recurrent[gdn_i], batch.seg_slot, batch.seg_start, batch.seg_len, batch.save_rows,
                              saves.conv[gdn_i], saves.recurrent[gdn_i], cfg.key_heads, GDN_EPS)
                x = x + layer.w_out(mixed)
                h = k.rms_norm(x, layer.post_norm, eps)
                x = x + layer.w_down(k.silu_mul(layer.w_gate_up(h)))
                gdn_i += 1
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The lm_head over final-normed rows, padded to a row count checked bit-stable (a row's
        norm is its own, so norming before the padding changes no bit)."""
        n = h.shape[0]
        padded = self.padding.rows(n)
        if padded > n:
            h = torch.cat([h, h.new_zeros(padded - n, h.shape[1])])
        return self.w.lm_head(h)[:n]
