"""skills/cpu_kernels/small_gemm.cpp on AMX tiles: each row is its fp32 sums rounded once, a row's
bits do not depend on the call's rows, and the switch between its two paths is real. Runs where
the CPU, the build and the OS give small_gemm AMX (an Intel Xeon with AMX); skipped elsewhere."""

from __future__ import annotations

import pytest
import torch

from skills.cpu_kernels import native

ext = native()
BF16 = torch.bfloat16


@pytest.fixture
def amx():
    if ext is None or not ext.small_gemm_available():
        pytest.skip("small_gemm needs the C++ kernels and AVX-512")
    was = ext.small_gemm_amx()
    if not ext.small_gemm_use_amx(True):
        pytest.skip("small_gemm has no AMX path here (no AMX in the CPU, the build or the OS)")
    yield
    ext.small_gemm_use_amx(was)


def rows_alone(x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([ext.small_gemm(x[i:i + 1], packed, n) for i in range(x.shape[0])])


# K: whole 32-k chunks (SmolLM2's 576 and 1536), a last chunk of 3 pairs, one partial chunk only.
@pytest.mark.parametrize("k", [576, 1536, 70, 22])
@pytest.mark.parametrize("rows", [1, 7, 16, 17, 32, 45])  # one A tile, two, and past 32 (two passes)
def test_amx_rows_are_their_sums_rounded_once_at_any_row_count(amx, k, rows) -> None:
    torch.manual_seed(k * 100 + rows)
    n = 45  # two whole 16-column tiles and a partial one
    x, w = torch.randn(rows, k, dtype=BF16), torch.randn(n, k, dtype=BF16)
    packed = ext.small_gemm_pack(w)
    got = ext.small_gemm(x, packed, n)
    want = x.double() @ w.double().T
    # bf16 rounding of the result, plus fp32 rounding of the k sums (2 a pair, |terms| summed)
    bound = want.abs() * 2 ** -8 + (x.double().abs() @ w.double().abs().T) * k * 2 ** -24 + 1e-6
    assert ((got.double() - want).abs() <= bound).all()
    assert torch.equal(got, rows_alone(x, packed, n))


def test_the_amx_path_is_the_one_taken_when_switched_on(amx) -> None:
    """The two paths sum in different orders (AVX-512: even and odd pairs apart; AMX: 32-k chunks),
    so over many outputs some round apart: equal outputs would mean the switch did nothing."""
    torch.manual_seed(0)
    x, w = torch.randn(32, 1536, dtype=BF16), torch.randn(3072, 1536, dtype=BF16)
    packed = ext.small_gemm_pack(w)
    on = ext.small_gemm(x, packed, 3072)
    assert ext.small_gemm_amx()
    assert not ext.small_gemm_use_amx(False) and not ext.small_gemm_amx()
    off = ext.small_gemm(x, packed, 3072)
    assert not torch.equal(on, off)
    assert ext.small_gemm_use_amx(True)
    assert torch.equal(ext.small_gemm(x, packed, 3072), on)
