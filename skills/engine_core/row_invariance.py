"""Which matmul a few-row step (decode, speculative verify chunk) runs, and whether a row's result
is the same at every row count, which lossless speculation in bf16 rests on.

`small_gemm` (skills/cpu_kernels) is row-invariant by construction but compute-bound from ~5 rows.
oneDNN is not row-invariant by contract: its kernel and blocking depend on the CPU and the row
count (on an AMD EPYC without AMX a lone bf16 row rounded differently from 2+ rows). On a CPU
where it picks one AMX kernel for every row count up to the verify chunk's, it is invariant there
too, and a verify step of 9-17 rows then costs what one row does. So the engine checks instead of
assuming: every weight shape of the model, each row count 1..rows against the rows computed
alone, at load time, on the model's own weights; and it takes oneDNN only where that holds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CHOICES = ("small_gemm", "onednn", "auto")


def rows_invariant(matmul: Callable[[torch.Tensor], torch.Tensor], in_features: int, max_rows: int,
                   dtype: torch.dtype | None = None, seed: int = 0) -> bool:
    """Whether `matmul(x)[i]` is bit-identical for every leading block x[:m], m in 1..max_rows,
    to row i computed alone (x: random, bf16 unless `dtype`)."""
    import torch  # here, so that a stack's --help does not load torch

    dtype = dtype or torch.bfloat16
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(max_rows, in_features, generator=gen).to(dtype)
    alone = torch.cat([matmul(x[i: i + 1]) for i in range(max_rows)])
    return all(torch.equal(matmul(x[:m]), alone[:m]) for m in range(2, max_rows + 1))


@dataclass(frozen=True)
class MatmulChoice:
    kernel: str  # "small_gemm" | "onednn"
    invariant: bool  # rows_invariant held for every weight shape (small_gemm: by construction)
    reason: str


def _median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def choose(linears: list, rows: int, wanted: str, small_available: bool) -> MatmulChoice:
    """linears: the model's PackedLinears (packing.py). rows: the largest few-row step (K + 1).
    wanted: "small_gemm", "onednn" (if row-invariant here) or "auto" (the faster of the two at
    `rows` rows, oneDNN only if row-invariant here)."""
    if wanted not in CHOICES:
        raise ValueError(f"few-row matmul {wanted!r}: one of {', '.join(CHOICES)}")
    if wanted == "small_gemm":
        return MatmulChoice("small_gemm", small_available, "asked for")
    by_shape = {}
    for m in linears:
        by_shape.setdefault((m.out_features, m.in_features), m)
    bad = [shape for shape, m in by_shape.items() if not rows_invariant(m.onednn, shape[1], rows)]
    if bad:
        return MatmulChoice("small_gemm", small_available,
                            f"oneDNN rounds a row differently at another row count here (weights {bad[0]})")
    if wanted == "onednn" or not small_available:
        return MatmulChoice("onednn", True, f"oneDNN row-invariant up to {rows} rows here")
    import torch

    xs = {k: torch.randn(rows, k).to(torch.bfloat16) for k in {shape[1] for shape in by_shape}}
    costs = {name: _median_ms(lambda: [getattr(m, name)(xs[m.in_features]) for m in linears])
             for name in ("onednn", "small_gemm")}
    kernel = min(costs, key=costs.get)
    return MatmulChoice(kernel, True, f"{rows}-row matmuls of every layer: oneDNN {costs['onednn']:.1f} ms, "
                                      f"small_gemm {costs['small_gemm']:.1f} ms (both row-invariant here)")
