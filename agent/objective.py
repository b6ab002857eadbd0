"""What the agent optimises, read from the scenario YAML: one metric, its direction, the bar to clear."""
from __future__ import annotations

import math
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.row import ResultRow
from harness.scenario import ScenarioSpec, names_point
from harness.stack import SCOPE, resolve_stack

LATENCY_SUFFIXES = ("_ms", "_s")


@dataclass(frozen=True)
class Objective:
    metric: str  # a key of the performance rows' metrics, e.g. "output_throughput"
    direction: str  # "higher" | "lower" is better
    load_point: str  # "last" (the largest load measured) or a load point label
    margin: float  # the stack must beat each baseline by this ratio (1.0: merely beat it)
    baselines: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"direction must be 'higher' or 'lower', not {self.direction!r}")

    @property
    def arrow(self) -> str:
        return "↑" if self.direction == "higher" else "↓"

    def ratio(self, value: float, other: float) -> float:
        """How many times better `value` is than `other`: above 1 is better, whatever the direction."""
        if value <= 0 or other <= 0:
            return math.nan
        return value / other if self.direction == "higher" else other / value

    def gain(self, value: float, other: float) -> float:
        """Relative improvement of value over other: +0.10 is 10 % better, negative is worse."""
        return self.ratio(value, other) - 1.0

    def better(self, value: float | None, other: float | None) -> bool:
        if value is None:
            return False
        if other is None:
            return True
        return self.gain(value, other) > 0

    def beats(self, value: float | None, baseline: float | None) -> bool:
        if value is None or baseline is None:
            return False
        ratio = self.ratio(value, baseline)
        return ratio > 1.0 and ratio >= self.margin

    def value_of(self, rows: list[ResultRow]) -> float | None:
        """The metric at the objective's load point, median over repeats; None without a usable row."""
        return median([float(r.metrics[self.metric]) for r in self.rows_at_point(rows)])

    def rows_at_point(self, rows: list[ResultRow]) -> list[ResultRow]:
        """The usable performance rows at the objective's load point ("last": the largest load measured)."""
        perf = [r for r in rows if r.kind == "performance" and r.status == "ok"
                and isinstance(r.metrics.get(self.metric), (int, float))]
        if not perf:
            return []
        if self.load_point != "last":
            return [r for r in perf if names_point(row_label(r), self.load_point)]
        label = row_label(max(perf, key=_load_size))
        return [r for r in perf if row_label(r) == label]


def median(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def row_label(row: ResultRow) -> str:
    return str((row.load_point or {}).get("label") or "load")


def _load_size(row: ResultRow) -> float:
    point = row.load_point or {}
    for key in ("request_rate", "concurrency"):
        if isinstance(point.get(key), (int, float)):
            return float(point[key])
    return 0.0


def default_direction(metric: str) -> str:
    """Latency-like metrics (…_ms, …_s) are better lower; rates and throughputs higher."""
    return "lower" if metric.endswith(LATENCY_SUFFIXES) else "higher"


def objective_for(spec: ScenarioSpec, agent_cfg: dict, metric: str | None = None, direction: str | None = None,
                  margin: float | None = None, baselines: list[str] | None = None) -> Objective:
    """The scenario's leaderboard primary and the YAML's `agent:` section, with command-line overrides."""
    board = spec.leaderboard
    chosen = metric or board.primary
    known = tuple(dict.fromkeys((board.primary, *board.columns, *board.plot)))
    if chosen not in known:
        raise ValueError(f"--metric {chosen}: setting {spec.setting}'s rows are compared on {', '.join(known)}")
    for name in baselines or ():  # an unknown one is one line now, not a failed measurement rounds later
        try:
            resolve_stack(SCOPE.sub("", name))
        except HarnessError as exc:
            raise ValueError(str(exc).replace("--stack", "--baseline", 1)) from None
    if direction is None:
        direction = board.direction if chosen == board.primary else default_direction(chosen)
    return Objective(
        metric=chosen,
        direction=direction,
        load_point=board.load_point,
        margin=float(margin if margin is not None else agent_cfg.get("margin", 1.0)),
        baselines=tuple(baselines if baselines is not None else agent_cfg.get("baselines", ["hf-reference"])),
    )
