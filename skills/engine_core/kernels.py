"""The elementwise pieces of a layer as plain functions of tensors, so `torch.compile` can fuse
each into one kernel (`use_compiled`); by default they run eagerly.

They take weights as arguments (not modules) so one compiled graph serves every layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As transformers' LlamaRMSNorm: normalise in float32, cast back, then scale."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual, rms_norm(x + residual))."""
    x = x + residual
    return x, weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, half: int) -> torch.Tensor:
    """rotate_half(x) * sin == roll(x, half) * sin with the first half of sin negated."""
    return x * cos + torch.roll(x, half, dims=-1) * sin_signed


def silu_mul(gate_up: torch.Tensor, intermediate: int) -> torch.Tensor:
    gate, up = gate_up.split(intermediate, dim=-1)
    return F.silu(gate) * up


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [S, kv_heads, group, d]; k, v [S, kv_heads, L, d]; mask [S, 1, 1, L] additive."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def decode_attention_loops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same as products and sums, in float32: compiled, it is one loop nest over all slots and
    heads, where SDPA's CPU kernel pays a fixed cost per (slot, head) that dominates at decode
    sizes (3 query rows, ~100 keys)."""
    scale = q.shape[-1] ** -0.5
    scores = (q.float().unsqueeze(3) * k.float().unsqueeze(2)).sum(-1) * scale + mask.float()
    probs = torch.softmax(scores, dim=-1)
    return (probs.unsqueeze(-1) * v.float().unsqueeze(2)).sum(3).to(q.dtype)


def row_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
    """Each row attends its own slot's keys 0..position: q [rows, kv_heads, group, d], the caches
    [slots, kv_heads, max_len, d]. The reference for skills/cpu_kernels' version, which the engine
    uses for decodes and verify chunks (one row at a time, so a row's numerics never depend on
    the rows around it); this one runs one SDPA call per row."""
    out = torch.empty_like(q)
    for r, (slot, pos) in enumerate(zip(slots.tolist(), positions.tolist())):
        k, v = k_cache[slot, :, : pos + 1], v_cache[slot, :, : pos + 1]
        out[r] = F.scaled_dot_product_attention(q[r].float(), k.float(), v.float()).to(q.dtype)
    return out


MIN_SLOTS_FOR_LOOPS = 4  # below this SDPA's per-(slot, head) cost is smaller than the compiled call's


def _compiled_decode_attention():
    loops = torch.compile(decode_attention_loops, dynamic=True)

    def pick(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return loops(q, k, v, mask) if q.shape[0] >= MIN_SLOTS_FOR_LOOPS else decode_attention(q, k, v, mask)

    return pick


_EAGER = {"rms_norm": rms_norm, "add_rms_norm": add_rms_norm, "rope": rope, "silu_mul": silu_mul,
          "decode_attention": decode_attention, "row_attention": row_attention, "decoder_layers": None,
          "small_gemm": None, "sample_top_p": None, "argmax_rows": None, "greedy_screen_ids": None}
_COMPILED = {"decode_attention": _compiled_decode_attention}
COMPILABLE = ("rms_norm", "add_rms_norm", "rope", "silu_mul", "decode_attention")


def _native_kernels() -> dict:
    """skills/cpu_kernels' fused C++ versions for bf16 tensors (None where they cannot be built);
    other dtypes keep the eager functions."""
    from skills.cpu_kernels import native

    ext = native()
    if ext is None:
        return {}
    # (Rows that attend alone and the C++ layer loop are switched on with the rest: see Kernels.)

    def bf16_or(eager, fused):
        return lambda x, *rest: fused(x, *rest) if x.dtype == torch.bfloat16 else eager(x, *rest)

    return {
        "rms_norm": bf16_or(rms_norm, ext.rms_norm),
        "add_rms_norm": bf16_or(add_rms_norm, lambda x, r, w, eps: tuple(ext.add_rms_norm(x, r, w, eps))),
        "rope": bf16_or(rope, lambda x, cos, sin, half: ext.rope(x, cos, sin)),
        "silu_mul": bf16_or(silu_mul, ext.silu_mul),
        "decode_attention": bf16_or(decode_attention, ext.decode_attention),
        "row_attention": ext.row_attention,
        "decoder_layers": ext.decoder_layers,
        "small_gemm": ext.small_gemm if ext.small_gemm_available() else None,
        "sample_top_p": ext.sample_top_p,
        "argmax_rows": ext.argmax_rows,
        "greedy_screen_ids": ext.greedy_screen_ids if ext.greedy_screen_available() else None,
    }


def small_gemm_on_amx() -> bool:
    """Whether the native small_gemm is in use and runs on AMX tiles (skills/cpu_kernels/small_gemm.cpp)."""
    if Kernels.small_gemm is None:
        return False
    from skills.cpu_kernels import native

    ext = native()
    return ext is not None and ext.small_gemm_amx()


class Kernels:
    """The functions layers call; `use_compiled()` swaps in compiled versions, `use_native()` fused C++ ones."""

    rms_norm = staticmethod(rms_norm)
    add_rms_norm = staticmethod(add_rms_norm)
    rope = staticmethod(rope)
    silu_mul = staticmethod(silu_mul)
    decode_attention = staticmethod(decode_attention)
    row_attention = staticmethod(row_attention)
    # skills/cpu_kernels' C++ layer loop (None: the Python layers run). Set together with the
    # native row attention, which is bf16 only: `rows_alone(dtype)` says whether a step can use them.
    decoder_layers = None
    small_gemm = None  # skills/cpu_kernels' few-row matmul (packing.PackedLinear uses it when set)
    sample_top_p = None  # skills/cpu_kernels' temperature / top-p sampler (sampler.py uses it when set)
    argmax_rows = None  # skills/cpu_kernels' argmax of bf16 rows (sampler.py's greedy rows when set)
    greedy_screen_ids = None  # skills/cpu_kernels' int8 head screen (packing.PackedHead.greedy_ids uses it when set)

    @classmethod
    def rows_alone(cls, dtype: torch.dtype) -> bool:
        """Whether every row of a step (decodes, verify and prompt chunks) attends row by row (the native
        kernel), which makes each row's numerics independent of its batch (the basis of lossless
        speculation without padding) and a step one row_attention call per layer, in the C++ loop."""
        return cls.decoder_layers is not None and dtype == torch.bfloat16

    @classmethod
    def use_compiled(cls, names: tuple[str, ...] = COMPILABLE, enabled: bool = True) -> None:
        for name in names:
            if not enabled:
                fn = _EAGER[name]
            elif name in _COMPILED:
                fn = _COMPILED[name]()
            else:
                fn = torch.compile(_EAGER[name], dynamic=True)
            setattr(cls, name, staticmethod(fn))

    @classmethod
    def use_native(cls, enabled: bool = True) -> bool:
        """Swap in skills/cpu_kernels (or back to eager); returns whether the native kernels are in use."""
        table = _native_kernels() if enabled else {}
        for name, fn in {**_EAGER, **table}.items():
            setattr(cls, name, staticmethod(fn) if fn is not None else None)
        return bool(table)
