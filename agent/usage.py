"""usage.jsonl: one line per LLM call, with tokens, cost and duration (zeros for the offline policy)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.atomic import append_line
from agent.progress import now_iso


@dataclass
class Usage:
    role: str  # "planner" | "implementer"
    backend: str
    model: str = ""
    round: int = 0
    attempt: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    duration_ms: int = 0
    at: str = field(default_factory=now_iso)


@dataclass(frozen=True)
class UsageLog:
    path: Path

    def add(self, usage: Usage) -> None:
        append_line(self.path, json.dumps(asdict(usage)))

    def records(self) -> list[Usage]:
        if not self.path.is_file():
            return []
        return [Usage(**json.loads(line)) for line in self.path.read_text().splitlines() if line.strip()]

    def totals(self) -> dict[str, float]:
        records = self.records()
        return {"calls": len(records), "total_tokens": sum(r.total_tokens for r in records),
                "cost_usd": round(sum(r.cost_usd for r in records), 6)}
