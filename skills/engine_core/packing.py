"""Prepacked oneDNN weights for the linear layers (CPU).

`F.linear` on a plain weight makes oneDNN reorder the weight into its blocked layout on every
call; for decode-sized inputs (a few rows) that reorder costs as much as the matmul. Packing
once at load time (as inductor's freezing pass does) saves 40-80 us per matmul on this CPU,
about 120 matmuls per forward of SmolLM2-135M.

Steps of at most `SMALL_ROWS` rows (decodes, verify chunks) take skills/cpu_kernels'
`small_gemm` instead, from a second copy of the weight in its tile layout: at 1-5 rows it streams
the weights ~1.5x faster than oneDNN, and a row's result never depends on the step's row count
(oneDNN's can, between 1 and 2+ rows and above ~9, depending on the CPU). The copy doubles the weights' memory.
"""

from __future__ import annotations

import torch
from torch import nn

from skills.cpu_kernels.cpu import cpu_flags

from .kernels import Kernels, small_gemm_on_amx


def can_pack(dtype: torch.dtype) -> bool:
    return torch.backends.mkldnn.is_available() and dtype in (torch.bfloat16, torch.float32)


def has_bf16_dot(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 pairs in one instruction (x86 AVX-512 BF16 or AMX, Arm BF16).
    Flags that cannot be read count as yes: oneDNN's own answer then decides."""
    flags = cpu_flags() if flags is None else flags
    return not flags or bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


UPCAST_SHARE = 0.5  # the most of the memory available at load that an fp32 copy of bf16 weights may take


def pack_dtype(dtype: torch.dtype, flags: frozenset[str] | None = None, weights: int = 0,
               available: int | None = None) -> torch.dtype:
    """The dtype oneDNN multiplies a `dtype` model's weights in. A bf16 model's weights are packed in
    fp32, and its bf16 activations upcast for the matmul, where oneDNN takes no bf16 (it needs AVX-512
    BW/VL/DQ or AVX-NE-CONVERT: not on an AVX2-only AMD EPYC of the Zen 3 generation) or the CPU has no
    bf16 dot product (an Ice Lake Xeon: AVX-512 without BF16, where oneDNN's bf16 kernels convert every
    operand and reach ~60 GFLOP/s against ~230 in fp32 at 64-512 rows). A bf16 x bf16 product is exact
    in fp32, so this is still a bf16 matmul with fp32 accumulation; only the weights' bytes double.
    Not where oneDNN takes bf16 and the fp32 copy of `weights` values would take more than
    UPCAST_SHARE of the `available` bytes: beside the bf16 weights (and small_gemm's copy) it would leave
    an 8B model no room on most hosts, and a slower prefill is better than a killed server."""
    if dtype != torch.bfloat16:
        return dtype
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.float32
    if has_bf16_dot(flags) or (available is not None and weights * 4 > UPCAST_SHARE * available):
        return dtype
    return torch.float32


def available_memory() -> int:
    """Bytes the system can give without swapping, now."""
    import psutil

    return psutil.virtual_memory().available


SMALL_ROWS = 32  # the most rows small_gemm takes (a verify chunk is K + 1 rows; K <= 31)


def _small_pack(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """The weight in small_gemm's layout, where the native kernels build with AVX-512."""
    if bias is not None or weight.dtype != torch.bfloat16:
        return None
    from skills.cpu_kernels import native

    ext = native()
    return ext.small_gemm_pack(weight.detach()) if ext is not None and ext.small_gemm_available() else None


class PackedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, compute: torch.dtype | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # != weight.dtype: activations are upcast for the matmul
        self.compute = pack_dtype(weight.dtype) if compute is None else compute
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(self.compute)),
                             persistent=False)
        self.bias = None if bias is None else bias.detach().to(self.compute)
        self.small = _small_pack(weight, bias)  # None: oneDNN for every row count
        self.aside: torch.Tensor | None = None  # small_gemm's copy while oneDNN is tried (CausalLM.use_few_row_matmul)
        self.small_rows = SMALL_ROWS  # steps of more rows take oneDNN (CausalLM.limit_small_gemm_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.small is not None and x.shape[0] <= self.small_rows and Kernels.small_gemm is not None:
            return self.small_gemm(x)
        return self.onednn(x)

    def onednn(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.mkldnn._linear_pointwise(x.contiguous().to(self.compute), self.packed, self.bias, "none", [], "")
        return out.to(x.dtype)

    def small_gemm(self, x: torch.Tensor) -> torch.Tensor:
        return Kernels.small_gemm(x.contiguous(), self.small, self.out_features)


def pack_linears(module: nn.Module, compute: torch.dtype | None = None) -> int:
    """Replace every nn.Linear below `module` by a PackedLinear; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, PackedLinear(child.weight, child.bias, compute))
            count += 1
        else:
            count += pack_linears(child, compute)
    return count


GREEDY_SCREEN_ROWS = 4  # from ~5 rows small_gemm is bound by its dot products: reading fewer bytes gains nothing
# On AMX tiles small_gemm's head costs the same at 1 to 32 rows, while the screen's fp32 sums grow
# with the rows: there the screen gains only at 1 row (AMX Xeon, decode step: 7.5 ms with it, 7.7
# without; at 2 rows 8.2 with it, 7.4 without).
GREEDY_SCREEN_ROWS_AMX = 1


def greedy_screen_rows() -> int:
    """The most rows the head's screen takes: fewer where small_gemm runs on AMX tiles."""
    return GREEDY_SCREEN_ROWS_AMX if small_gemm_on_amx() else GREEDY_SCREEN_ROWS


def _screen_pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """skills/cpu_kernels/greedy_head.cpp's int8 screen of the head (q, scales), where it builds."""
    from skills.cpu_kernels import native

    ext = native()
    return tuple(ext.greedy_screen_pack(weight.detach())) if ext is not None and ext.greedy_screen_available() else None


class PackedHead(nn.Module):
    """The lm_head as a packed copy (a tied embedding stays plain for the lookup), and with small_gemm's
    copy an int8 screen of it that finds the greedy token of a few rows reading half the bytes."""

    def __init__(self, weight: torch.Tensor, compute: torch.dtype | None = None) -> None:
        super().__init__()
        self.linear = PackedLinear(weight, None, compute)
        self.screen = _screen_pack(weight) if self.linear.small is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def greedy_ids(self, x: torch.Tensor) -> list[int] | None:
        """argmax(self(x)) per row, the same token ids bit for bit (greedy_head.cpp says why), or None
        where the screen does not apply: no screen, small_gemm not the head's matmul, more than
        greedy_screen_rows() rows, or a logit that is not finite."""
        if (self.screen is None or self.linear.small is None or Kernels.small_gemm is None
                or Kernels.greedy_screen_ids is None or x.dtype != torch.bfloat16
                or not 1 <= x.shape[0] <= greedy_screen_rows()):
            return None
        ids = Kernels.greedy_screen_ids(x.contiguous(), *self.screen, self.linear.small, self.linear.out_features)
        ids = ids.tolist()
        return None if -1 in ids else ids
