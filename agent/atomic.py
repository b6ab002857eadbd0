"""Writes that a kill -9 cannot leave half done: a temporary file renamed over the target."""
from __future__ import annotations

import os
from pathlib import Path

from harness.atomic import atomic_write_text as write_text  # noqa: F401 - the agent's name for it


def append_line(path: Path, line: str) -> None:
    """One appended line, flushed to disk before returning (append-only logs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line if line.endswith("\n") else line + "\n")
        f.flush()
        os.fsync(f.fileno())
