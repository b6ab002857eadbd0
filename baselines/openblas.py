"""Debian's threaded OpenBLAS, which mlx[cpu] on Linux needs preloaded: where it is, and which
kernels it must be told to use.

OpenBLAS built for many CPUs (DYNAMIC_ARCH) picks its kernels at load from the CPU's family and
model. Debian 12's 0.3.21 does not know newer Intel models (family 6 model 207, a Xeon of 2024)
and falls back to "Prescott", its SSE3 kernels: fp32 matmuls ran at 33-45 GFLOP/s there instead of
200-290 with its AVX-512 ones, and everything in the MLX environment (engine-e, engine-g, the
mlx-lm baselines) ran slower for it. Where it falls back so on a CPU with AVX-512 or AVX2, the
launch names the kernels that CPU can run (OPENBLAS_CORETYPE); a CPU it knows keeps its choice.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from harness.machine import cpu_flags

PACKAGE = "libopenblas0-pthread"
FALLBACK = "Prescott"  # what 0.3.x picks for an x86-64 CPU it does not know
# The kernels to name, widest first, with the CPU flags each needs (as OpenBLAS's own checks).
CORES = (({"avx512f", "avx512bw", "avx512vl"}, "SkylakeX"), ({"avx2", "fma"}, "Haswell"))

_CORENAME = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); lib.openblas_get_corename.restype = ctypes.c_char_p;"
             " print(lib.openblas_get_corename().decode())")


def library() -> str | None:
    """The package's libblas.so.3 (None where dpkg does not list it)."""
    try:
        files = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True).stdout.split()
    except OSError:
        return None
    return next((f for f in files if f.endswith("/libblas.so.3")), None)


def corename(lib: str, coretype: str | None = None) -> str | None:
    """The kernels the library picks when loaded in a fresh process (with OPENBLAS_CORETYPE set to
    `coretype`, if given); None where it cannot be asked."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    try:
        done = subprocess.run([sys.executable, "-c", _CORENAME, lib], capture_output=True, text=True, env=env,
                              timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def coretype(picked: str | None, flags: set[str]) -> str | None:
    """The OPENBLAS_CORETYPE to set: None while OpenBLAS knows the CPU (or the CPU has neither
    AVX-512 nor AVX2), else the widest kernels its flags allow."""
    if picked != FALLBACK:
        return None
    return next((core for needs, core in CORES if needs <= flags), None)


@dataclass(frozen=True)
class Preload:
    env: dict[str, str]   # what every process of an engine using the library needs
    kernels: str | None   # the kernels such a process runs, e.g. "OpenBLAS SkylakeX"; None where it could not be asked


def preload(lib: str) -> Preload:
    """The preload, and the kernels where OpenBLAS would fall back to SSE3 on this CPU (checked to
    take: a name it does not know is ignored)."""
    picked = corename(lib)
    core = coretype(picked, cpu_flags())
    if core and corename(lib, core) == core:
        return Preload({"LD_PRELOAD": lib, "OPENBLAS_CORETYPE": core}, f"OpenBLAS {core}")
    return Preload({"LD_PRELOAD": lib}, f"OpenBLAS {picked}" if picked else None)
