"""skills/engine_core/row_invariance.py: the check that a few-row matmul gives a row the same
numbers at every row count, and the choice between small_gemm and oneDNN built on it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from skills.engine_core.row_invariance import choose, rows_invariant

BF16 = torch.bfloat16


def row_by_row(w: torch.Tensor):
    """Each row multiplied alone: invariant by construction."""
    return lambda x: torch.cat([F.linear(r[None], w) for r in x])


def lone_row_differs(w: torch.Tensor):
    """Rounds a lone row differently (as oneDNN did on a CPU without AMX)."""
    return lambda x: F.linear(x, w) * (1.01 if x.shape[0] == 1 else 1.0)


def depends_on_blocks_of_4(w: torch.Tensor):
    """Agrees with the rows alone up to 4 rows, then sums in another order (a kernel switch)."""
    def matmul(x):
        if x.shape[0] <= 4:
            return torch.cat([F.linear(r[None], w) for r in x])
        return (x.float() @ w.float().T * (1 + 2**-8)).to(x.dtype)
    return matmul


@pytest.fixture
def weight() -> torch.Tensor:
    return torch.randn(48, 32, generator=torch.Generator().manual_seed(0)).to(BF16)


def test_a_row_by_row_matmul_is_invariant(weight) -> None:
    assert rows_invariant(row_by_row(weight), 32, 9)


@pytest.mark.parametrize("make", [lone_row_differs, depends_on_blocks_of_4])
def test_a_matmul_that_depends_on_the_row_count_is_caught(weight, make) -> None:
    assert not rows_invariant(make(weight), 32, 9)
    assert rows_invariant(make(weight), 32, 4) is (make is depends_on_blocks_of_4)  # only what is checked


@dataclass
class FakeLinear:
    """The two matmuls of a packing.PackedLinear, with chosen behaviours."""

    out_features: int
    in_features: int
    onednn: object
    small_gemm: object


def linears(onednn_maker) -> list[FakeLinear]:
    out = []
    for i, (n, k) in enumerate([(48, 32), (32, 48), (48, 32)]):
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(i)).to(BF16)
        out.append(FakeLinear(n, k, onednn_maker(w), row_by_row(w)))
    return out


def test_onednn_is_taken_only_where_it_is_row_invariant() -> None:
    bad = choose(linears(lone_row_differs), 9, "onednn", small_available=True)
    assert bad.kernel == "small_gemm" and bad.invariant and "(48, 32)" in bad.reason
    good = choose(linears(row_by_row), 9, "onednn", small_available=True)
    assert good.kernel == "onednn" and good.invariant
    none_left = choose(linears(lone_row_differs), 9, "auto", small_available=False)
    assert none_left.kernel == "small_gemm" and not none_left.invariant  # the engine then keeps >= 2 rows


def test_auto_times_the_two_where_both_are_invariant() -> None:
    choice = choose(linears(row_by_row), 9, "auto", small_available=True)
    assert choice.kernel in ("onednn", "small_gemm") and choice.invariant
    assert "oneDNN" in choice.reason and "small_gemm" in choice.reason and " ms" in choice.reason


def test_small_gemm_when_asked_and_a_clear_error_otherwise() -> None:
    assert choose(linears(lone_row_differs), 9, "small_gemm", small_available=True).kernel == "small_gemm"
    with pytest.raises(ValueError, match="one of small_gemm, onednn, auto"):
        choose(linears(row_by_row), 9, "amx", small_available=True)
