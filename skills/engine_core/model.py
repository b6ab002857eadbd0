"""A Llama-family decoder over packed rows (see batch.py), with per-layer state.

Each layer is a token mixer (here attention; a recurrent mixer for hybrids) plus an MLP.
The model asks each mixer for its `state_spec()` so the runner can allocate the state pool
without knowing what kind of layers there are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .batch import ForwardBatch
from .config import ModelConfig
from .layers import RMSNorm, Rotary, SwiGLU
from .packing import PackedHead, pack_linears
from .state import StatePool, StateSpec


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mixer = Attention(cfg)
        self.post_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor, batch: ForwardBatch, state, rotary: Rotary,
                cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the residual stream, h: this layer's normed input. Returns (x, mlp output): the next
        layer adds and norms them in one fused step."""
        x, h = self.post_norm.add_forward(x, self.mixer(h, batch, state, rotary, cos, sin))
        return x, self.mlp(h)


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.rotary = Rotary(cfg.rope, cfg.head_dim, cfg.max_position)
        self.weight_bytes = 0  # the weights as loaded (a decode step reads them all once)
        # Tied: lm_head is the embedding matrix itself (until `pack` gives it a packed copy).
        self.lm_head: nn.Module | None = None if cfg.tie_embeddings else nn.Linear(
            cfg.hidden_size, cfg.vocab_size, bias=False)

    def pack(self) -> None:
        """Prepack every matmul weight for oneDNN (see packing.py)."""
        head = self.embed.weight if self.lm_head is None else self.lm_head.weight
        pack_linears(self.layers)
        self.lm_head = PackedHead(head)

    def state_specs(self) -> list[StateSpec | None]:
        return [layer.mixer.state_spec() for layer in self.layers]

    def forward(self, batch: ForwardBatch, pool: StatePool) -> torch.Tensor:
        """Logits [samples, vocab] of `batch.sample_rows`, in the model dtype."""
        x = self.embed(batch.input_ids)
        cos, sin = self.rotary.tables(batch.positions, x.dtype)
        h = self.layers[0].input_norm(x)
        for i, (layer, state) in enumerate(zip(self.layers, pool.layers)):
            x, out = layer(x, h, batch, state, self.rotary, cos, sin)
            if i + 1 < len(self.layers):
                x, h = self.layers[i + 1].input_norm.add_forward(x, out)
        if batch.sample_rows.shape[0] != x.shape[0]:
            x, out = x[batch.sample_rows], out[batch.sample_rows]
        x = self.norm(x + out)
        return F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)
