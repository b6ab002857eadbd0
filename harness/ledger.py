"""The stacks this machine's harnesses launched, each on record until it is stopped.

A launched stack runs in a session of its own (so that stopping it stops its workers too), which
means a harness killed with SIGKILL cannot take it down: the stack keeps its port, cores and
memory. Every launch first stops the stacks whose harness is gone. A process is known by its
pid and its start time (/proc), so a pid the system has handed to another process is left alone
(where there is no /proc, nothing is stopped: records are only dropped).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Callable

from harness.assets import cache_root
from harness.atomic import atomic_write_json
from harness.procfs import started_ticks

log = logging.getLogger(__name__)


def folder() -> Path:
    return cache_root() / "launched"


def record(name: str, process: subprocess.Popen) -> Path:
    """Put a stack just launched on record; returns the record to `forget` once it is stopped."""
    path = folder() / f"{process.pid}.json"
    atomic_write_json(path, {"name": name, "pid": process.pid, "started": started_ticks(process.pid),
                             "harness": os.getpid(), "harness_started": started_ticks(os.getpid())})
    return path


def forget(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def reap() -> list[str]:
    """Stop every stack on record whose harness is gone; one line per stack stopped."""
    return _stop(lambda e: not _alive(e["harness"], e["harness_started"]),
                 "left running by a harness (pid {harness}) that was killed")


def stop_own() -> list[str]:
    """Stop every stack on record that this process launched and that still runs: the last resort at a
    harness's exit, for a stack whose launch or teardown a signal cut short."""
    me = (os.getpid(), started_ticks(os.getpid()))
    return _stop(lambda e: (e["harness"], e["harness_started"]) == me,
                 "still running as its harness (pid {harness}) exits")


def _stop(chosen: Callable[[dict], bool], why: str) -> list[str]:
    stopped = []
    for path in sorted(folder().glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written, or already reaped by another harness
        if not chosen(entry):
            continue
        if _alive(entry["pid"], entry["started"]):
            try:
                os.killpg(entry["pid"], signal.SIGKILL)  # the stack's session: itself and its workers
            except (ProcessLookupError, PermissionError):
                pass
            stopped.append(f"stopped stack {entry['name']} (pid {entry['pid']}), " + why.format(**entry))
            log.warning(stopped[-1])
        path.unlink(missing_ok=True)
    return stopped


def _alive(pid: int, started: int | None) -> bool:
    return started is not None and started_ticks(pid) == started
