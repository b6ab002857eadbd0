"""The CPU's feature flags, which decide what the kernels compile to (`-march=native`) and which
matmul a few-row step takes first (engine_core/row_invariance.py)."""
from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features` in Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() in ("flags", "Features"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def flags_digest() -> str:
    """A short digest of the flags: a build for one CPU is not loaded on another (an illegal instruction)."""
    return hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:8]
