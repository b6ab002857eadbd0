"""skills/engine_core/row_invariance.py: the first few-row matmul an engine tries, from the CPU's
features alone (the same choice on every start of one machine, never a timing race)."""

from __future__ import annotations

import pytest

from skills.engine_core import row_invariance
from skills.engine_core.row_invariance import AMX_SMALL_GEMM_ROWS, cpu_flags, first_choice, small_gemm_rows


@pytest.mark.parametrize("amx, small, wanted, expected", [
    (True, True, "auto", "onednn"),  # AMX that only oneDNN uses: a 13-row step costs what one row does
    (False, True, "auto", "small_gemm"),  # no AMX: oneDNN is no faster and rounded rows differently on an EPYC
    (False, False, "auto", "onednn"),  # no AVX-512 BF16: small_gemm does not exist here
    (True, True, "small_gemm", "small_gemm"),
    (False, True, "onednn", "onednn"),
    (True, False, "small_gemm", "onednn"),
])
def test_the_first_choice_follows_the_cpu_and_the_flag(amx, small, wanted, expected) -> None:
    assert first_choice(wanted, small_available=small, amx=amx) == expected


@pytest.mark.parametrize("wanted, expected",
                         [("auto", "small_gemm"), ("onednn", "onednn"), ("small_gemm", "small_gemm")])
def test_where_small_gemm_runs_on_amx_tiles_auto_takes_it(wanted, expected) -> None:
    assert first_choice(wanted, small_available=True, amx=True, small_amx=True) == expected
    assert small_gemm_rows("auto", amx=True, small_amx=True) is None  # no cap: its cost is flat in the rows
    assert small_gemm_rows(8, amx=True, small_amx=True) == 8


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


@pytest.mark.parametrize("wanted, amx, expected", [("auto", True, AMX_SMALL_GEMM_ROWS), ("auto", False, None),
                                                   (None, True, None), (12, True, 12), (0, False, 0)])
def test_the_small_gemm_row_cap_follows_the_cpu_unless_given(wanted, amx, expected) -> None:
    assert small_gemm_rows(wanted, amx=amx) == expected


@pytest.mark.parametrize("rows", [-1, "many", 2.5])
def test_a_bad_small_gemm_row_cap_is_refused(rows) -> None:
    from skills.engine_core.engine import EngineConfig

    with pytest.raises(ValueError, match="small_gemm_rows"):
        EngineConfig(small_gemm_rows=rows)


def _engine_a_arguments(*argv: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "results" / "stacks" / "engine-a" / "main.py"
    spec = importlib.util.spec_from_file_location("engine_a_main", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args(["--model", ".", "--port", "1", *argv])


def test_engine_a_caps_small_gemm_rows_by_the_cpu_and_takes_a_count() -> None:
    assert _engine_a_arguments().small_gemm_rows == "auto"
    assert _engine_a_arguments("--small-gemm-rows", "12").small_gemm_rows == 12


@pytest.mark.parametrize("bad", ["-3", "many"])
def test_a_bad_small_gemm_rows_flag_is_one_line_from_argparse(bad, capsys) -> None:
    with pytest.raises(SystemExit):
        _engine_a_arguments("--small-gemm-rows", bad)
    assert f"a row count or auto, not '{bad}'" in capsys.readouterr().err
