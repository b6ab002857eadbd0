"""Debian's OpenBLAS, preloaded for the MLX environment: a CPU it does not know gets the vector
kernels that CPU can run, not its SSE3 fallback."""
import pytest

from baselines import openblas
from harness.machine import cpu_flags

LIB = openblas.library()
needs_openblas = pytest.mark.skipif(LIB is None, reason=f"{openblas.PACKAGE} is not installed")


@pytest.mark.parametrize("picked, flags, want", [
    ("Prescott", {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"}, "SkylakeX"),
    ("Prescott", {"avx2", "fma", "avx512f"}, "Haswell"),  # AVX-512 without BW/VL: not SkylakeX's
    ("Prescott", {"sse3", "avx", "avx2", "fma"}, "Haswell"),
    ("Prescott", {"sse3"}, None),          # an old CPU: the fallback is what it can run
    ("Cooperlake", {"avx2", "avx512f"}, None),  # a CPU it knows keeps its choice
    ("Zen", {"avx2", "avx512f"}, None),
    (None, {"avx2", "avx512f"}, None),      # the library could not be asked
])
def test_only_the_sse3_fallback_on_a_vector_cpu_is_overridden(picked, flags, want):
    assert openblas.coretype(picked, flags) == want


@needs_openblas
def test_the_probe_reads_the_kernels_a_fresh_process_picks():
    assert openblas.corename(LIB, "Haswell") == "Haswell"
    assert openblas.corename(LIB) not in (None, "")


@needs_openblas
def test_the_launch_env_gives_this_cpu_vector_kernels():
    preload = openblas.preload(LIB)
    env = preload.env
    assert env["LD_PRELOAD"] == LIB
    picked = openblas.corename(LIB, env.get("OPENBLAS_CORETYPE"))
    assert preload.kernels == f"OpenBLAS {picked}"
    if cpu_flags() & {"avx2", "avx512f"}:
        assert picked != openblas.FALLBACK, f"OpenBLAS would run its SSE3 kernels here (env {env})"
