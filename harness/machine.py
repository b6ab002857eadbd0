"""Facts about the machine, the code and the library versions, recorded in every row."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from functools import cache

from harness.stack import REPO_ROOT

VERSIONED = ("torch", "transformers", "numpy", "httpx", "servebench")


# The instruction sets that change which kernels a stack can run (bf16 dot products, AMX tiles):
# two VMs both named "AMD EPYC" can be an AVX2-only Zen 3 and an AVX-512 Zen 4.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "asimd")


def _cpuinfo(key: str) -> str | None:
    """The first value of `key` in /proc/cpuinfo (None where there is none)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.split(":", 1)[0].strip() == key:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`); empty where /proc/cpuinfo cannot be read."""
    return set((_cpuinfo("flags") or _cpuinfo("Features") or "").split())


def usable_cpus() -> list[int]:
    """The CPUs this process may run on: a `taskset`, a container's cpuset or a scheduler's pinning
    narrow them, and os.cpu_count() still counts every CPU online (threads sized from it oversubscribe)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        return list(range(os.cpu_count() or 1))


def cpu_list(cpus: list[int]) -> str:
    """CPU ids as the ranges thread-binding settings take: [0, 1, 2, 5] -> "0-2,5"."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _gpu() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return ", ".join(sorted(set(out.stdout.split("\n")) - {""})) or None
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@cache
def machine() -> dict:
    flags = cpu_flags()
    family, model = _cpuinfo("cpu family"), _cpuinfo("model")
    return {"cpu": _cpu_model(), "cores": len(usable_cpus()), "cores_online": os.cpu_count(),
            "arch": platform.machine(),
            "cpu_family_model": f"{family}/{model}" if family and model else None,
            "isa": [f for f in ISA_FLAGS if f in flags],
            "os": platform.platform(terse=True), "gpu": _gpu(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


@cache
def commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        return {"sha": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


@cache
def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found
