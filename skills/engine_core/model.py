"""A Llama-family decoder over packed rows (see batch.py), with per-layer state.

Each layer is a token mixer (here attention; a recurrent mixer for hybrids) plus an MLP.
The model asks each mixer for its `state_spec()` so the runner can allocate the state pool
without knowing what kind of layers there are.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from . import arena
from .attention import Attention
from .batch import ForwardBatch
from .config import ModelConfig
from .kernels import Kernels
from .layers import RMSNorm, Rotary, SwiGLU
from .packing import SMALL_ROWS, PackedHead, PackedLinear, available_memory, pack_dtype, pack_linears
from .state import StatePool, StateSpec

log = logging.getLogger(__name__)


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
        self._loop_weights: list[torch.Tensor] | None = None  # for Kernels.decoder_layers (see pack)
        self.has_small_matmuls = False  # every matmul has small_gemm's copy of its weight (see pack)
        self.packed = False  # the matmul weights are prepacked for oneDNN (see pack)
        self.small_rows = SMALL_ROWS  # the most rows a step gives small_gemm (see limit_small_gemm_rows)
        # Tied: lm_head is the embedding matrix itself (until `pack` gives it a packed copy).
        self.lm_head: nn.Module | None = None if cfg.tie_embeddings else nn.Linear(
            cfg.hidden_size, cfg.vocab_size, bias=False)

    def pack(self, available: int | None = None) -> None:
        """Prepack every matmul weight for oneDNN (see packing.py), in the dtype `pack_dtype` picks for
        them all given the memory `available` (now, where None)."""
        head = self.embed.weight if self.lm_head is None else self.lm_head.weight
        weights = head.numel() + sum(m.weight.numel() for m in self.layers.modules() if isinstance(m, nn.Linear))
        available = available_memory() if available is None else available
        compute = pack_dtype(head.dtype, weights=weights, available=available)
        if compute != pack_dtype(head.dtype):
            log.warning("oneDNN weights kept in %s: an fp32 copy (%.1f GiB) would take more than half of the "
                        "%.1f GiB available; prefill is slower on this CPU", str(compute).removeprefix("torch."),
                        weights * 4 / 2**30, available / 2**30)
        pack_linears(self.layers, compute)
        self.lm_head = PackedHead(head, compute)
        linears = self._packed_linears()
        small = [m for m in linears if m.small is not None]
        screen = [] if self.lm_head.screen is None else [self.lm_head.screen[0]]
        copies = arena.gather([m.small for m in small] + screen)  # in step order, on huge pages
        for m, copy in zip(small, copies):
            m.small = copy
        if screen:
            self.lm_head.screen = (copies[-1], self.lm_head.screen[1])
        self._loop_weights = self._native_loop_weights()
        self.has_small_matmuls = bool(linears) and all(m.small is not None for m in linears)
        self.packed = True

    @property
    def few_row_kernel(self) -> str:
        """The matmul of few-row steps: "small_gemm", "onednn" (prepacked) or "torch" (plain weights)."""
        return "small_gemm" if self.has_small_matmuls and Kernels.small_gemm is not None else (
            "onednn" if self.packed else "torch")

    @property
    def can_use_small_gemm(self) -> bool:
        """Whether `use_few_row_matmul("small_gemm")` would take: small_gemm copies in use or aside."""
        linears = self._packed_linears()
        return (Kernels.small_gemm is not None and bool(linears)
                and all(m.small is not None or m.aside is not None for m in linears))

    def use_few_row_matmul(self, kernel: str) -> None:
        """Switch few-row steps between "small_gemm" and "onednn" (row_invariance.py); the small_gemm
        copies are kept aside until `drop_unused_copies`, so the switch can be undone."""
        linears = self._packed_linears()
        if kernel == "onednn":
            for m in linears:
                m.aside, m.small = m.small if m.small is not None else m.aside, None
        elif kernel == "small_gemm":
            for m in linears:
                m.small, m.aside = m.small if m.small is not None else m.aside, None
        else:
            raise ValueError(f"few-row matmul {kernel!r}: small_gemm or onednn")
        self.has_small_matmuls = bool(linears) and all(m.small is not None for m in linears)
        self._loop_weights = self._native_loop_weights()

    def limit_small_gemm_rows(self, rows: int) -> None:
        """Steps of more than `rows` rows take oneDNN even where small_gemm is the few-row matmul
        (row_invariance.small_gemm_rows): on an AMX CPU oneDNN is faster from ~10 rows. A row's bits
        then depend on its step's row count, so an engine that verifies drafts keeps SMALL_ROWS."""
        self.small_rows = max(0, min(rows, SMALL_ROWS))
        for m in self._packed_linears():
            m.small_rows = self.small_rows

    def drop_unused_copies(self) -> None:
        """Free the small_gemm copies of a model that runs oneDNN (they double the weights' memory),
        and the head's screen with them (it stands in for small_gemm's head)."""
        for m in self._packed_linears():
            m.aside = None
        if isinstance(self.lm_head, PackedHead) and self.lm_head.linear.small is None:
            self.lm_head.screen = None

    def greedy_ids(self, x: torch.Tensor) -> list[int] | None:
        """The greedy token of each row of `final_hidden`'s x from the head's int8 screen (the same
        ids as argmax(head(x))), or None where it does not apply (packing.PackedHead.greedy_ids)."""
        return self.lm_head.greedy_ids(x) if isinstance(self.lm_head, PackedHead) else None

    @property
    def onednn_dtype(self) -> str | None:
        """The dtype oneDNN's packed weights multiply in (packing.pack_dtype), or None where nothing is packed."""
        packed = self._packed_linears()
        return str(packed[0].compute).removeprefix("torch.") if packed else None

    def _packed_linears(self) -> list[PackedLinear]:
        return [m for m in self.modules() if isinstance(m, PackedLinear)]

    def _native_loop_weights(self) -> list[torch.Tensor] | None:
        """Per layer: qkv, o, gate_up, down (oneDNN-packed), post-attention norm, next input norm,
        then the four in small_gemm's layout (empty tensors without it): the order
        skills/cpu_kernels/decoder.cpp takes. None where the C++ loop does not apply: biases, or
        norms with different epsilons."""
        layers = list(self.layers)
        linears = [m for layer in layers for m in (layer.mixer.qkv, layer.mixer.o, layer.mlp.gate_up, layer.mlp.down)]
        if any(m.bias is not None for m in linears) or len({n.eps for layer in layers
                                                           for n in (layer.input_norm, layer.post_norm)}) != 1:
            return None
        weights = []
        for i, layer in enumerate(layers):
            nxt = layers[i + 1].input_norm.weight if i + 1 < len(layers) else torch.empty(0)
            linears = (layer.mixer.qkv, layer.mixer.o, layer.mlp.gate_up, layer.mlp.down)
            weights += [m.packed for m in linears] + [layer.post_norm.weight, nxt]
            weights += [torch.empty(0) if m.small is None else m.small for m in linears]
        return [w.detach() for w in weights]

    def state_specs(self) -> list[StateSpec | None]:
        return [layer.mixer.state_spec() for layer in self.layers]

    def forward(self, batch: ForwardBatch, pool: StatePool) -> torch.Tensor:
        """Logits [samples, vocab] of `batch.sample_rows`, in the model dtype."""
        return self.head(self.final_hidden(batch, pool))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)

    def final_hidden(self, batch: ForwardBatch, pool: StatePool) -> torch.Tensor:
        """The final norm's output [samples, hidden] of `batch.sample_rows`: what the head multiplies."""
        x = self.embed(batch.input_ids)
        cos, sin = self.rotary.tables(batch.positions, x.dtype)
        h = self.layers[0].input_norm(x)
        if batch.rows_alone and Kernels.decoder_layers is not None and self._loop_weights is not None:
            # The same kernels in the same order as the loop below, in C++ (skills/cpu_kernels/decoder.cpp).
            cfg = self.cfg
            x, out = Kernels.decoder_layers(x, h, self._loop_weights, [s.k for s in pool.layers],
                                            [s.v for s in pool.layers], batch.slots, batch.positions, cos, sin,
                                            cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size, cfg.rms_eps,
                                            Kernels.small_gemm is not None and x.shape[0] <= self.small_rows)
        else:
            for i, (layer, state) in enumerate(zip(self.layers, pool.layers)):
                x, out = layer(x, h, batch, state, self.rotary, cos, sin)
                if i + 1 < len(self.layers):
                    x, h = self.layers[i + 1].input_norm.add_forward(x, out)
        if batch.sample_rows.shape[0] != x.shape[0]:
            x, out = x[batch.sample_rows], out[batch.sample_rows]
        return self.norm(x + out)
