"""Memory bandwidth of this machine and the "bandwidth achieved" of a decode, as gpt-fast reports it.

A decode step at batch 1 reads every weight once, so model bytes x tokens/s is the memory
traffic it sustains; against a large copy measured on the same machine in the same run, it says
how close a stack is to the bound a batch-1 decode can never beat.
"""
from __future__ import annotations

import time
from pathlib import Path

COPY_BYTES = 1 << 30  # well past any cache


def memory_bandwidth(nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Bytes/s of a large copy (read + write counted), best of `repeats`, with torch's threads."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return 2 * nbytes / best


def weight_bytes(model_dir: Path) -> int:
    """The weights of a prepared model folder as stored (safetensors), read once per decode step."""
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
