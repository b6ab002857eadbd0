"""Which matmul a few-row step (decode, speculative verify chunk) runs first, decided by the CPU's
features alone, so that a machine always makes the same choice (never a timing race at start-up).

`small_gemm` (skills/cpu_kernels) is row-invariant by construction. On AVX-512 BF16 it is
compute-bound from ~5 rows (without BF16, on fp32 multiply-adds, from ~8); where it runs on AMX
tiles (a CPU with AMX, the usual case there) every step of up to 32 rows costs about its weight
stream. oneDNN is not row-invariant by contract: its kernel and blocking depend on the CPU and the
row count. On a CPU with AMX it runs one tile kernel for every row count of a verify chunk; without
AMX it is no faster than small_gemm at these sizes, and on an AMD EPYC with AVX-512 BF16 it rounded a row differently at some row counts. So: small_gemm
first, unless the CPU has AMX and small_gemm cannot use it (then oneDNN), or oneDNN is asked for.
Whatever is taken, the engine then checks that verify steps equal one-token decodes through its real
forward (step_invariance.py) and falls back where they do not (loader.py).
"""

from __future__ import annotations

from skills.cpu_kernels.cpu import cpu_flags

CHOICES = ("small_gemm", "onednn", "auto")
# Where small_gemm is the few-row matmul on a CPU with AMX that its AVX-512 loop runs on (not its
# AMX tiles), steps of more rows than this take oneDNN:
# on an Intel Xeon (2 cores, 2026-12-06) SmolLM2-135M's layer matmuls took small_gemm 17.6 ms
# against oneDNN 24.8 at 8 rows, 26.3 against 21.9 at 13, 25.8 against 18.4 at 16 (the head 7.6
# against 5.0 there). Without AMX small_gemm keeps every step it can take (packing.SMALL_ROWS).
AMX_SMALL_GEMM_ROWS = 8


def has_amx() -> bool:
    return {"amx_bf16", "amx_tile"} <= cpu_flags()


def _cpu_amx(amx: bool | None) -> bool:
    """`amx` as given, or where None whether this CPU's flags list AMX."""
    return has_amx() if amx is None else amx


def only_onednn_has_amx(amx: bool | None, small_amx: bool) -> bool:
    """Whether the CPU has AMX (amx None: read its flags) and small_gemm runs without it."""
    return _cpu_amx(amx) and not small_amx


def small_gemm_rows(wanted: int | str | None, amx: bool | None = None, small_amx: bool = False) -> int | None:
    """The most rows a small_gemm step takes (EngineConfig.small_gemm_rows): a row count as given; None
    (every step small_gemm can take); "auto": AMX_SMALL_GEMM_ROWS where the CPU has AMX and small_gemm
    does not run on it (small_amx: it does), else None."""
    if wanted != "auto":
        return wanted
    return AMX_SMALL_GEMM_ROWS if only_onednn_has_amx(amx, small_amx) else None


def first_choice(wanted: str, small_available: bool, amx: bool | None = None, small_amx: bool = False) -> str:
    """The few-row matmul to try first: "small_gemm" or "onednn". wanted: "small_gemm", "onednn",
    or "auto" (oneDNN where the CPU has AMX and small_gemm does not run on it, else small_gemm).
    Without small_gemm: oneDNN."""
    if wanted not in CHOICES:
        raise ValueError(f"few-row matmul {wanted!r}: one of {', '.join(CHOICES)}")
    if not small_available:
        return "onednn"
    if wanted == "auto":
        return "onednn" if only_onednn_has_amx(amx, small_amx) else "small_gemm"
    return wanted


def flat_in_rows(kernel: str, amx: bool | None = None, small_amx: bool = False) -> bool:
    """Whether a step's matmuls cost about the same at 1 and at ~13 rows: AMX tiles, through oneDNN
    on a CPU with AMX or through small_gemm where it runs on them."""
    return (kernel == "onednn" and _cpu_amx(amx)) or (kernel == "small_gemm" and small_amx)
