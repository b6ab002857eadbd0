"""`python -m harness compare`: ratios are direction-aware and only between cells of the same load
point; bandwidth achieved is computed only where one request decodes at a time."""
from __future__ import annotations

import pytest

from harness.bandwidth import memory_bandwidth, weight_bytes
from harness.compare import Cell, cells_of, decode_bandwidth, ratio, ratios
from harness.row import ResultRow


def row(stack: str, label: str, value: float, tpot: float, concurrency: int | None = None,
        status: str = "ok") -> ResultRow:
    return ResultRow(run_id="r", stack=stack, setting="A", scenario="s", profile="tiny", kind="performance",
                     status=status, load_point={"label": label, "concurrency": concurrency},
                     metrics={"output_throughput": value, "median_tpot_ms": tpot, "p99_ttft_ms": 50.0})


def test_ratio_follows_the_metric_direction():
    assert ratio(300.0, 200.0, "higher") == pytest.approx(1.5)
    assert ratio(100.0, 200.0, "lower") == pytest.approx(2.0)  # half the latency: 2x better
    assert ratio(None, 200.0, "higher") is None and ratio(100.0, 0.0, "higher") is None


def test_ratios_pair_cells_of_the_same_load_point_only():
    rows = [row("engine", "rate=8.0", 300, 30), row("vllm", "rate=8.0", 250, 35), row("vllm", "rate=inf", 400, 40),
            row("engine", "conc=1", 50, 20, 1), row("vllm", "conc=1", 40, 25, 1)]
    cells = cells_of(rows + [ResultRow("r", "vllm", "A", "s", "tiny", "accuracy", "ok")], "output_throughput")
    assert len(cells) == 5  # the accuracy row is not a cell
    got = {(r.stack, r.baseline, r.label): r.value for r in ratios(cells, ["vllm"], "higher")}
    assert got == {("engine", "vllm", "rate=8.0"): pytest.approx(1.2), ("engine", "vllm", "conc=1"): pytest.approx(1.25)}


def test_repeats_become_one_cell_and_ratios_are_between_medians():
    """`--repeats 3`: each stack's repeats at a load point are one cell (their median), so a ratio
    compares medians, not each repeat with the baseline's last repeat."""
    rows = [row("engine", "conc=1", v, 4.0, 1) for v in (250, 252, 246)]
    rows += [row("vllm", "conc=1", v, 25.0, 1) for v in (41.5, 40.0, 30.0)]
    rows += [row("vllm", "conc=1", 0.0, 0.0, 1, status="failed")]  # a failed repeat is not a measurement
    cells = cells_of(rows, "output_throughput")
    assert [(c.stack, c.repeats, c.primary, c.primary_range) for c in cells] == [
        ("engine", 3, 250, (246, 252)), ("vllm", 3, 40.0, (30.0, 41.5))]
    [r] = ratios(cells, ["vllm"], "higher")
    assert r.value == pytest.approx(250 / 40.0)


def test_bandwidth_achieved_only_at_concurrency_one():
    one = Cell("engine", "conc=1", "ok", 45.0, 50.0, 20.0, 1)
    assert decode_bandwidth(one, 270_000_000) == pytest.approx(270e6 * 50)  # 50 tok/s between tokens
    assert decode_bandwidth(Cell("engine", "rate=8.0", "ok", 300.0, 50.0, 20.0, None), 270_000_000) is None
    assert decode_bandwidth(Cell("engine", "conc=1", "failed", None, None, None, 1), 270_000_000) is None


def test_weight_bytes_and_copy_bandwidth(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_text("{}")
    assert weight_bytes(tmp_path) == 1000
    assert memory_bandwidth(nbytes=64 << 20, repeats=2) > 1e8  # any machine copies faster than 100 MB/s
