"""rounds.json: one record per round (round 0 is the starting stack), and its Markdown table."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.atomic import write_text
from agent.objective import Objective

CHECKPOINT = "checkpoint"  # passed the judge and kept: the stack moved forward
ROLLED_BACK = "rolled_back"  # passed the judge but was not better: reset to the last checkpoint
REJECTED = "rejected"  # every attempt failed the judge (exhaustion): reset to the last checkpoint


@dataclass
class RoundRecord:
    round: int
    task: str
    outcome: str  # CHECKPOINT | ROLLED_BACK | REJECTED
    item: str = ""  # the roadmap item the round served
    change: dict = field(default_factory=dict)  # the offline policy's knob change; {} for LLM rounds
    attempts: int = 0
    passed: bool = False  # the judge's verdict on the round's last attempt
    judge: str = ""  # one line: why it passed or failed
    metric: float | None = None  # the objective's metric, only when the judge passed
    metrics: dict = field(default_factory=dict)  # the other columns, for the table
    gain: float | None = None  # relative to the best checkpoint before this round (+ is better)
    baseline_ratios: dict = field(default_factory=dict)  # baseline -> ratio (> 1: better than it)
    profile: str = ""  # the evaluator's profile summary of the measured stack
    signals: list[str] = field(default_factory=list)  # raised at the end of this round
    commit: str = ""  # the round's final commit (the checkpoint, or the rollback)
    tag: str | None = None  # "round-N" when checkpointed
    started_at: str = ""
    finished_at: str = ""

    @property
    def kept(self) -> bool:
        return self.outcome == CHECKPOINT


@dataclass(frozen=True)
class RoundsLog:
    path: Path

    def load(self) -> list[RoundRecord]:
        if not self.path.is_file():
            return []
        known = set(RoundRecord.__dataclass_fields__)
        return [RoundRecord(**{k: v for k, v in r.items() if k in known}) for r in json.loads(self.path.read_text())]

    def append(self, record: RoundRecord) -> None:
        records = [r for r in self.load() if r.round != record.round] + [record]
        write_text(self.path, json.dumps([asdict(r) for r in sorted(records, key=lambda r: r.round)], indent=2) + "\n")


def last_checkpoint(records: list[RoundRecord]) -> RoundRecord | None:
    kept = [r for r in records if r.kept]
    return kept[-1] if kept else None


def markdown_table(records: list[RoundRecord], objective: Objective, columns: tuple[str, ...] = ()) -> str:
    """The rounds as a Markdown table: what was tried, the judge's verdict, the metric and what happened."""
    bases = list(objective.baselines)
    head = (["round", "task", "attempts", "judge", f"{objective.metric} {objective.arrow}"] + list(columns)
            + ["vs best"] + [f"vs {b}" for b in bases] + ["outcome", "signals"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [str(r.round), _esc(r.task), str(r.attempts), "pass" if r.passed else f"fail: {_esc(r.judge)}",
                 _num(r.metric)] + [_num(r.metrics.get(c)) for c in columns]
        cells.append("—" if r.gain is None else f"{r.gain * 100:+.1f}%")
        cells += [_ratio(r.baseline_ratios.get(b)) for b in bases]
        cells += [r.outcome + (f" ({r.tag})" if r.tag else ""), ", ".join(r.signals) or "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(x) -> str:
    return "—" if x is None else f"{x:.1f}"


def _ratio(x) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _esc(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"
