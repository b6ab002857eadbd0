"""The one place the agent runs the harness: `pytest scenarios/test_<name>.py --stack ...`, rows read back."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness import session
from harness.row import ResultRow, read_rows
from harness.stack import REPO_ROOT

OUTPUT_TAIL = 3000


@dataclass
class HarnessRun:
    run_id: str
    returncode: int
    rows: list[ResultRow] = field(default_factory=list)
    output: str = ""  # the tail of pytest's output
    timed_out: bool = False

    def rows_of(self, stack: str, kind: str) -> list[ResultRow]:
        return [r for r in self.rows if r.stack == stack and r.kind == kind]


def run_scenario(scenario: str, stacks: list[str], profile: str, results_dir: Path, run_id: str,
                 select: str | None = None, stop_on_failure: bool = False, timeout_s: float = 1800) -> HarnessRun:
    """Score `stacks` on the scenario's tests (optionally `-k select`); rows land in results_dir."""
    cmd = [sys.executable, "-m", "pytest", f"scenarios/test_{scenario}.py", "--profile", profile,
           "--results-dir", str(results_dir), "--run-id", run_id, "--no-leaderboard",
           "-p", "no:cacheprovider", "-q", "-rfE", "--color=no"]
    for s in stacks:
        cmd += ["--stack", s]
    if select:
        cmd += ["-k", select]
    if stop_on_failure:
        cmd.append("-x")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    timed_out = False
    proc = session.start(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, text=True)
    try:  # nothing between the start and here: a signal that lands after it stops the harness run too
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        out = session.stop(proc)  # SIGTERM first: its teardown stops the stacks it launched
    except BaseException:  # the agent stopped (Ctrl-C, SIGTERM): the harness stops too, and its stack with it
        session.stop(proc)
        raise
    rows = [r for r in read_rows(results_dir) if r.run_id == run_id]
    return HarnessRun(run_id, proc.returncode, rows, (out or "")[-OUTPUT_TAIL:], timed_out)
