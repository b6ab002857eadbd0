"""The machine's compute speed beside a cell: the other half of what a shared machine takes away.

A concurrency-1 decode streams the weights (harness.bandwidth measures the copies beside it); a
prefill, and a verify forward of several rows, multiply at the cores' peak. A neighbour can slow
either: in one setting-B run on an AMD EPYC a round whose copies fell from 45 to 28 GB/s also saw
the prefill-bound TTFT rise by half. A short bf16 matmul at a small model's shapes, timed next to
the copies, tells which of the two a slow round lost.
"""
from __future__ import annotations

import time

# rows x inner x outer: a 256-token prefill chunk through a 576 -> 1536 projection (SmolLM2-135M's MLP)
SHAPE = (256, 576, 1536)


def matmul_speed(seconds: float = 0.05, repeats: int = 5, shape: tuple[int, int, int] = SHAPE) -> float:
    """FLOP/s of a bf16 matmul of `shape` with torch's threads, best of `repeats` timings of about
    `seconds` each (the best, as for the copies: a neighbour only ever slows it)."""
    import torch

    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    b = torch.randn(k, n, generator=gen).to(torch.bfloat16)
    out = torch.empty(m, n, dtype=torch.bfloat16)
    torch.matmul(a, b, out=out)  # the first call picks and builds the kernel
    started = time.perf_counter()
    torch.matmul(a, b, out=out)
    iterations = max(1, int(seconds / max(time.perf_counter() - started, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(iterations):
            torch.matmul(a, b, out=out)
        best = min(best, (time.perf_counter() - started) / iterations)
    return 2 * m * k * n / best
