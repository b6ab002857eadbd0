"""Direction-aware comparisons: a latency that goes down is an improvement, a throughput that goes down is not."""
from __future__ import annotations

import pytest

from agent.objective import Objective, default_direction, objective_for
from agent.rounds import CHECKPOINT, REJECTED, ROLLED_BACK, RoundRecord, markdown_table
from agent.signals import best_before, compute
from harness.row import ResultRow
from harness.scenario import load_scenario
from harness.stack import REPO_ROOT

THROUGHPUT = Objective("output_throughput", "higher", "last", 1.0, ("hf-reference",))
LATENCY = Objective("median_ttft_ms", "lower", "last", 1.0, ("hf-reference",))


def test_gain_and_better_follow_the_direction():
    assert THROUGHPUT.better(120, 100) and not THROUGHPUT.better(80, 100)
    assert LATENCY.better(80, 100) and not LATENCY.better(120, 100)
    assert LATENCY.gain(50, 100) == pytest.approx(1.0)  # twice as fast
    assert THROUGHPUT.gain(50, 100) == pytest.approx(-0.5)


def test_beats_needs_the_margin():
    strict = Objective("median_ttft_ms", "lower", "last", 1.5, ())
    assert strict.beats(60, 100) and not strict.beats(80, 100)
    assert LATENCY.beats(99, 100) and not LATENCY.beats(100, 100)


def test_direction_from_the_metric_name_and_the_scenario():
    assert default_direction("p99_ttft_ms") == "lower" and default_direction("output_throughput") == "higher"
    spec = load_scenario(REPO_ROOT / "scenarios" / "standard_serving.yaml")
    o = objective_for(spec, {"margin": 1.2, "baselines": ["hf-reference"]})
    assert (o.metric, o.direction, o.margin) == ("output_throughput", "higher", 1.2)
    o = objective_for(spec, {}, metric="median_ttft_ms")
    assert o.direction == "lower"


def _row(rate: float, value: float, status: str = "ok") -> ResultRow:
    return ResultRow(run_id="r", stack="s", setting="A", scenario="x", profile="smoke", kind="performance",
                     status=status, load_point={"label": f"rate={rate}", "request_rate": rate},
                     metrics={"output_throughput": value})


def test_value_is_read_at_the_largest_load_point():
    rows = [_row(0.5, 10.0), _row(8.0, 55.0), _row(2.0, 30.0), _row(16.0, 99.0, status="failed")]
    assert THROUGHPUT.value_of(rows) == 55.0


def _rec(n: int, metric: float | None, outcome: str = CHECKPOINT, passed: bool = True) -> RoundRecord:
    return RoundRecord(round=n, task=f"t{n}", outcome=outcome, passed=passed, metric=metric, attempts=1)


def test_regression_is_direction_aware():
    # Latency went from 100 to 80 ms: an improvement, no regression signal (the study's loop got this wrong).
    records = [_rec(0, 100.0), _rec(1, 80.0)]
    assert not compute(records, LATENCY).regression
    assert compute(records, THROUGHPUT).regression
    assert best_before(records + [_rec(2, 90.0, ROLLED_BACK)], 2, LATENCY) == 80.0


def test_exhaustion_and_plateau():
    records = [_rec(0, 100.0), _rec(1, None, REJECTED, passed=False)]
    assert compute(records, THROUGHPUT).names() == ["exhaustion"]
    flat = [_rec(0, 100.0), _rec(1, 103.0), _rec(2, 101.0, ROLLED_BACK)]
    s = compute(flat, THROUGHPUT)
    assert s.plateau and "plateau" in s.describe()
    assert not compute([_rec(0, 100.0), _rec(1, 120.0), _rec(2, 101.0, ROLLED_BACK)], THROUGHPUT).plateau
    assert compute([_rec(0, 100.0)], THROUGHPUT).names() == []


def test_rounds_table_shows_ratios_and_outcomes():
    r = _rec(1, 80.0)
    r.baseline_ratios, r.tag, r.gain = {"hf-reference": 1.25}, "round-1", 0.25
    table = markdown_table([_rec(0, 100.0), r], LATENCY)
    assert "median_ttft_ms ↓" in table and "1.25×" in table and "+25.0%" in table and "checkpoint (round-1)" in table
