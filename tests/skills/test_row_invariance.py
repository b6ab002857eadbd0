"""skills/engine_core/row_invariance.py: the first few-row matmul an engine tries, from the CPU's
features alone (the same choice on every start of one machine, never a timing race)."""

from __future__ import annotations

import pytest

from skills.engine_core import row_invariance
from skills.engine_core.row_invariance import cpu_flags, first_choice


@pytest.mark.parametrize("amx, small, wanted, expected", [
    (True, True, "auto", "onednn"),  # AMX: one tile kernel, a 13-row step costs what one row does
    (False, True, "auto", "small_gemm"),  # no AMX: oneDNN is no faster and rounded rows differently on an EPYC
    (False, False, "auto", "onednn"),  # no AVX-512 BF16: small_gemm does not exist here
    (True, True, "small_gemm", "small_gemm"),
    (False, True, "onednn", "onednn"),
    (True, False, "small_gemm", "onednn"),
])
def test_the_first_choice_follows_the_cpu_and_the_flag(amx, small, wanted, expected) -> None:
    assert first_choice(wanted, small_available=small, amx=amx) == expected


def test_auto_reads_this_machines_flags_and_answers_the_same_every_time(monkeypatch) -> None:
    monkeypatch.setattr(row_invariance, "has_amx", lambda: True)
    assert {first_choice("auto", True) for _ in range(5)} == {"onednn"}
    monkeypatch.setattr(row_invariance, "has_amx", lambda: False)
    assert {first_choice("auto", True) for _ in range(5)} == {"small_gemm"}


def test_cpu_flags_are_read_on_linux() -> None:
    flags = cpu_flags()
    assert "sse2" in flags or not flags  # x86 Linux lists sse2; elsewhere nothing is read
    assert row_invariance.has_amx() == ({"amx_bf16", "amx_tile"} <= flags)


def test_a_clear_error_for_an_unknown_kernel() -> None:
    with pytest.raises(ValueError, match="one of small_gemm, onednn, auto"):
        first_choice("amx", small_available=True)
