"""Fused CPU kernels for the decode step (norms, rope, SwiGLU, decode attention): see NOTE.md.

`native()` builds the C++ extension once per environment (build.py; about a minute the first
time, done by scripts/setup.sh) and returns it, or None, with the reason logged, where it cannot be built (no
C++ compiler or Python headers). Callers keep the eager torch path for that case.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name(name) for name in ("kernels.cpp", "row_attention.cpp", "small_gemm.cpp", "decoder.cpp",
                                                         "greedy_head.cpp", "top_p.cpp", "argmax.cpp")]


@functools.cache
def native():
    if os.environ.get("SERVEBENCH_NO_NATIVE_KERNELS"):
        return None
    try:
        from skills.cpu_kernels.build import load

        ext = load("servebench_cpu_kernels", SOURCES)
    except Exception as exc:  # no compiler or headers: the eager path still runs
        log.warning("cpu_kernels: could not build the native kernels (%s); using eager torch",
                    str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__)
        return None
    # small_gemm on AMX tiles where the CPU, the build and the OS allow it (see small_gemm.cpp);
    # SERVEBENCH_SMALL_GEMM_AMX=0 keeps its AVX-512 loop, to compare the two.
    ext.small_gemm_use_amx(os.environ.get("SERVEBENCH_SMALL_GEMM_AMX", "1") != "0")
    return ext
