"""Signals carried into the next round's plan: regression, exhaustion, plateau (direction-aware)."""
from __future__ import annotations

from dataclasses import dataclass, field

from agent.objective import Objective
from agent.rounds import REJECTED, RoundRecord

PLATEAU_ROUNDS = 3
PLATEAU_SPREAD = 0.05


@dataclass(frozen=True)
class Signals:
    regression: bool = False  # the last round measured no better than the best before it
    exhaustion: bool = False  # the last round failed the judge on every attempt: ask for a smaller task
    plateau: bool = False  # the last PLATEAU_ROUNDS measurements lie within PLATEAU_SPREAD of each other
    notes: tuple[str, ...] = field(default_factory=tuple)

    def names(self) -> list[str]:
        return [n for n in ("regression", "exhaustion", "plateau") if getattr(self, n)]

    def describe(self) -> str:
        return "\n".join(self.notes) if self.notes else "none"


def best_before(records: list[RoundRecord], round_no: int, objective: Objective) -> float | None:
    """The best metric among checkpoints before `round_no`."""
    best = None
    for r in records:
        if r.round < round_no and r.kept and r.metric is not None and objective.better(r.metric, best):
            best = r.metric
    return best


def spread(values: list[float]) -> float:
    low, high = min(values), max(values)
    return (high - low) / low if low > 0 else float("inf")


def compute(records: list[RoundRecord], objective: Objective, rounds: int = PLATEAU_ROUNDS,
            max_spread: float = PLATEAU_SPREAD) -> Signals:
    """The signals after the last record; none before the first real round."""
    if not records or records[-1].round == 0:
        return Signals()
    last = records[-1]
    notes = []
    exhaustion = last.outcome == REJECTED
    if exhaustion:
        notes.append(f"exhaustion: round {last.round} failed the judge {last.attempts} times ({last.judge}); "
                     f"propose a strictly smaller, easier task")
    regression = False
    if last.metric is not None:
        best = best_before(records, last.round, objective)
        regression = best is not None and not objective.better(last.metric, best)
        if regression:
            notes.append(f"regression: round {last.round} measured {objective.metric}={last.metric:.2f}, "
                         f"not better than the best {best:.2f} ({objective.direction} is better); it was rolled back")
    measured = [r.metric for r in records if r.metric is not None][-rounds:]
    plateau = len(measured) >= rounds and spread(measured) <= max_spread
    if plateau:
        notes.append(f"plateau: the last {rounds} measurements of {objective.metric} lie within "
                     f"{spread(measured) * 100:.1f}% ({', '.join(f'{m:.2f}' for m in measured)}); pivot to another "
                     f"direction or name the change and the measurement that will break it")
    return Signals(regression, exhaustion, plateau, tuple(notes))
