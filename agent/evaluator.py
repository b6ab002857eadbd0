"""The evaluator: the harness's benchmark numbers for a stack, direction-aware, plus a profile note.

It reads the performance rows the harness wrote (the scenario's tests on the chosen profile) and
boils them down to the objective's metric at its load point, the other leaderboard columns, and
a short profile summary for the planner.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.harness_run import HarnessRun, run_scenario
from agent.objective import Objective, median
from agent.profiler import EXTRA, summarize
from harness.row import ResultRow


@dataclass
class Measurement:
    value: float | None  # the objective's metric; None when no usable performance row exists
    metrics: dict[str, float] = field(default_factory=dict)  # leaderboard columns at the same load point
    load_point: dict = field(default_factory=dict)
    profile: str = ""  # summary for the planner
    problem: str = ""  # why there is no value

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Measurement":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def measurement(rows: list[ResultRow], objective: Objective, columns: tuple[str, ...]) -> Measurement:
    at = objective.rows_at_point(rows)
    if not at:
        perf = [r for r in rows if r.kind == "performance"]
        why = next((f"{r.status}: {r.error}" for r in perf if r.status != "ok"), "no performance row")
        return Measurement(None, problem=why)
    metrics = {}
    for c in dict.fromkeys((objective.metric, *columns, *EXTRA)):
        value = median([float(r.metrics[c]) for r in at if isinstance(r.metrics.get(c), (int, float))])
        if value is not None:
            metrics[c] = value
    m = Measurement(metrics[objective.metric], metrics, dict(at[0].load_point or {}))
    m.profile = summarize(m, objective)
    return m


def measure_stack(scenario: str, stack: str, profile: str, results_dir: Path, run_id: str, objective: Objective,
                  columns: tuple[str, ...], timeout_s: float = 1800) -> tuple[Measurement, HarnessRun]:
    """Benchmark one stack (a baseline) on the performance tests only."""
    run = run_scenario(scenario, [stack], profile, results_dir, run_id, select="performance", timeout_s=timeout_s)
    m = measurement(run.rows, objective, columns)
    if m.value is None and not run.rows:
        m.problem = f"the harness wrote no rows: {run.output[-500:]}"
    return m, run
