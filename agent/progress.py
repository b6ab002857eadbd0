"""progress.md: the append-only log of the run, one entry per role output or loop event."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from agent.atomic import append_line


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ProgressLog:
    path: Path

    def add(self, round_no: int, who: str, text: str) -> None:
        """One entry: a heading line and the text indented under it, flushed before returning."""
        body = "\n".join(f"  {line}" if line else "" for line in text.strip().splitlines())
        append_line(self.path, f"- **r{round_no} {who}** ({now_iso()})\n{body}\n" if body else
                    f"- **r{round_no} {who}** ({now_iso()})\n")

    def text(self) -> str:
        return self.path.read_text() if self.path.is_file() else ""

    def tail(self, chars: int = 4000) -> str:
        text = self.text()
        return text if len(text) <= chars else "…" + text[-chars:]
