"""A row-invariant forward for mlx-lm's Llama-family models: a token's logits do not depend on
how many tokens share its forward.

Why: jump-forward runs `[picked] + forced` through the model in one forward, and the lossless
claim compares that with feeding the same tokens one at a time. In float32 on the CPU, MLX hands
matmuls to BLAS, and OpenBLAS picks its kernel by the matrix shape (a small-matrix kernel or gemv
for few rows, the blocked gemm for more), each summing in its own order: measured on SmolLM2, the
last logits after a 4-16 token extend differed from 4-16 one-token steps by ~3e-5, and the K/V
written differed too (NOTE.md). Two changes make every row's numbers independent of the forward's
row count, so one code path serves both modes:

- `RowInvariantLinear`: a chunk's matmul runs in blocks of at most `group` rows, where `group` is
  calibrated per weight shape at load (`calibrate_group`): the most rows for which every row
  equals that row computed alone, i.e. the kernel a one-token step uses. One-token steps are the
  plain matmul (most forwards: they pay nothing); a shape invariant at any row count (SmolLM2's
  MLP up/gate and LM head) runs a chunk in one matmul; the others cost a chunk a few gemv-sized
  calls. (Padding every matmul up to the blocked kernel's row count instead was exact too, but
  made every one-token step ~40% slower: NOTE.md.)
- Attention row by row: row r attends through the same `scaled_dot_product_attention` call a
  one-token step would make (one query, the first `offset + r + 1` cached keys, no mask), so the
  softmax sums run over the same lengths in the same order.

The prompt's prefill does not need this (both modes prefill the same way) and uses mlx-lm's own
forward, which is much faster for hundreds of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx import nn


@dataclass(frozen=True)
class LinearPlan:
    """How one weight shape is multiplied: in groups of at most `group` rows (a one-token step is
    one group of one row, the plain matmul)."""

    out_features: int
    in_features: int
    group: int


def calibrate_group(weight: mx.array, max_rows: int, seed: int = 0) -> int:
    """The most rows this weight's matmul may take at once and still give each row exactly what
    it gives that row alone (the one-token step's matmul), probing 1..max_rows rows.

    BLAS chooses its kernel by shape, not by values, so random rows of the weight's dtype probe
    it. On OpenBLAS (SmolLM2's shapes, NOTE.md) a shape is either invariant at every row count
    or only up to a few rows (its gemv / small-matrix kernel), never beyond a first failure."""
    rng = np.random.default_rng(seed)
    x = mx.array(rng.standard_normal((max_rows, weight.shape[1])).astype(np.float32)).astype(weight.dtype)

    def host(y: mx.array) -> np.ndarray:  # numpy has no bfloat16; widening to float32 is exact
        return np.array(y.astype(mx.float32))

    alone = [host(x[i:i + 1] @ weight.T)[0] for i in range(max_rows)]
    for rows in range(2, max_rows + 1):
        together = host(x[:rows] @ weight.T)
        if any(not np.array_equal(together[i], alone[i]) for i in range(rows)):
            return rows - 1
    return max_rows


def grouped_matmul(x: mx.array, weight: mx.array, group: int) -> mx.array:
    """`x @ weight.T` for 2-D x, in consecutive blocks of at most `group` rows."""
    rows = x.shape[0]
    if rows <= group:
        return x @ weight.T
    return mx.concatenate([x[i:i + group] @ weight.T for i in range(0, rows, group)], axis=0)


class RowInvariantLinear:
    """A linear layer's (or a tied embedding's) weight, multiplied in calibrated row groups."""

    def __init__(self, weight: mx.array, bias: mx.array | None, group: int) -> None:
        self.weight = weight
        self.bias = bias
        self.group = group

    def __call__(self, x: mx.array) -> mx.array:
        lead = x.shape[:-1]
        y = grouped_matmul(x.reshape(-1, x.shape[-1]), self.weight, self.group)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, y.shape[-1])


class InvariantLlama:
    """The forward of an mlx-lm Llama-family `Model` (its modules and weights, its KV caches),
    with row-invariant matmuls and row-by-row attention. `plans` lists each weight shape's
    calibration (for /metrics and the NOTE)."""

    def __init__(self, model, max_rows: int = 32) -> None:
        self.model = model
        self.max_rows = max_rows
        self.inner = model.model
        self._groups: dict[tuple[int, int, str], int] = {}
        self.layers = [self._wrap_layer(layer) for layer in self.inner.layers]
        head = model.lm_head if not model.args.tie_word_embeddings else None
        self.head = self._linear(head.weight if head is not None else self.inner.embed_tokens.weight,
                                 getattr(head, "bias", None) if head is not None else None)

    @property
    def plans(self) -> list[LinearPlan]:
        return [LinearPlan(o, i, g) for (o, i, _), g in sorted(self._groups.items())]

    def _linear(self, weight: mx.array, bias: mx.array | None = None) -> RowInvariantLinear:
        key = (*weight.shape, str(weight.dtype))
        if key not in self._groups:
            self._groups[key] = calibrate_group(weight, self.max_rows)
        return RowInvariantLinear(weight, bias, self._groups[key])

    def _wrap_layer(self, layer) -> dict:
        def lin(module):
            return self._linear(module.weight, module.get("bias") if "bias" in module else None)

        attn, mlp = layer.self_attn, layer.mlp
        return {"layer": layer, "q": lin(attn.q_proj), "k": lin(attn.k_proj), "v": lin(attn.v_proj),
                "o": lin(attn.o_proj), "gate": lin(mlp.gate_proj), "up": lin(mlp.up_proj),
                "down": lin(mlp.down_proj)}

    def __call__(self, tokens: list[int], cache: list) -> mx.array:
        """Run `tokens` (at most max_rows) at the caches' offset, extending them; returns the
        last row's logits, [vocab] (the rows before it are forced tokens: their K/V is what is
        wanted, and the LM head is row-invariant at any count, so one row is the step's)."""
        if not 0 < len(tokens) <= self.max_rows:
            raise ValueError(f"a row-invariant forward takes 1..{self.max_rows} tokens, not {len(tokens)}")
        h = self.inner.embed_tokens(mx.array(tokens)[None])
        for wrapped, layer_cache in zip(self.layers, cache):
            h = self._block(wrapped, h, layer_cache)
        return self.head(self.inner.norm(h[:, -1:, :]))[0, 0]

    def _block(self, w: dict, x: mx.array, cache) -> mx.array:
        layer = w["layer"]
        h = x + self._attention(w, layer.self_attn, layer.input_layernorm(x), cache)
        y = layer.post_attention_layernorm(h)
        gate = w["gate"](y)
        return h + w["down"](nn.silu(gate) * w["up"](y))

    def _attention(self, w: dict, attn, x: mx.array, cache) -> mx.array:
        batch, rows, _ = x.shape
        q = w["q"](x).reshape(batch, rows, attn.n_heads, -1).transpose(0, 2, 1, 3)
        k = w["k"](x).reshape(batch, rows, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = w["v"](x).reshape(batch, rows, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
        start = cache.offset
        q = attn.rope(q, offset=start)
        k = attn.rope(k, offset=start)
        keys, values = cache.update_and_fetch(k, v)
        outs = []
        for r in range(rows):
            seen = start + r + 1
            ks, vs = (keys, values) if seen == keys.shape[2] else (keys[..., :seen, :], values[..., :seen, :])
            outs.append(mx.fast.scaled_dot_product_attention(q[:, :, r:r + 1], ks, vs, scale=attn.scale, mask=None))
        out = outs[0] if rows == 1 else mx.concatenate(outs, axis=2)
        return w["o"](out.transpose(0, 2, 1, 3).reshape(batch, rows, -1))
