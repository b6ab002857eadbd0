"""roadmap.md: the planner's strategic memory, one item per line of a Markdown table.

Statuses follow the study: `parked` means the implementation was buggy but the direction is
believable; `abandoned` needs a mechanism that explains why the technique cannot help here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

STATUSES = ("todo", "in_progress", "done", "parked", "abandoned")
HEADER = "| id | item | kind | status | rounds | reason |"
RULE = "|---|---|---|---|---|---|"


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    kind: str = "minor"  # "major": structural, 1-3 rounds; "minor": a fix or a setting, 1 round
    status: str = "todo"
    rounds: tuple[int, ...] = ()
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"roadmap item {self.id}: unknown status {self.status!r}")


@dataclass
class Roadmap:
    goal: str = ""
    items: list[Item] = field(default_factory=list)

    def get(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.id == item_id), None)

    def upsert(self, item: Item) -> None:
        for n, old in enumerate(self.items):
            if old.id == item.id:
                self.items[n] = item
                return
        self.items.append(item)

    def set_status(self, item_id: str, status: str, reason: str = "", round_no: int | None = None) -> Item:
        item = self.get(item_id)
        if item is None:
            raise KeyError(item_id)
        rounds = item.rounds + ((round_no,) if round_no is not None and round_no not in item.rounds else ())
        updated = replace(item, status=status, reason=reason or item.reason, rounds=rounds)
        self.upsert(updated)
        return updated

    def with_status(self, *statuses: str) -> list[Item]:
        return [i for i in self.items if i.status in statuses]

    def render(self) -> str:
        lines = ["# Roadmap", "", self.goal.strip(), "", HEADER, RULE]
        for i in self.items:
            rounds = ",".join(str(r) for r in i.rounds)
            lines.append(f"| {_cell(i.id)} | {_cell(i.title)} | {i.kind} | {i.status} | {rounds} | {_cell(i.reason)} |")
        return "\n".join(lines) + "\n"


def parse(text: str) -> Roadmap:
    """Read back what render() wrote (and what an LLM planner edited in the same shape)."""
    lines = text.splitlines()
    try:
        start = next(n for n, line in enumerate(lines) if line.strip().replace(" ", "") == HEADER.replace(" ", ""))
    except StopIteration:
        return Roadmap(goal=text.strip())
    goal = "\n".join(l for l in lines[:start] if not l.startswith("# ")).strip()
    items = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = _split(line)
        if len(cells) != 6:
            continue
        item_id, title, kind, status, rounds, reason = cells
        if status not in STATUSES:
            continue
        items.append(Item(item_id, title, kind or "minor", status,
                          tuple(int(r) for r in rounds.split(",") if r.strip().isdigit()), reason))
    return Roadmap(goal, items)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|")


def _split(line: str) -> list[str]:
    cells, cur, escaped = [], "", False
    for ch in line.strip()[1:]:
        if escaped:
            cur += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return cells
