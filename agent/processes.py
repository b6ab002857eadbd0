"""Processes a run leaves behind when it is killed: found by the workspace path in their command line.

Every process a run starts names its workspace: the harness's pytest (`--stack <ws>/stack.yaml`)
and the stack itself (`python <ws>/main.py`). A kill -9 of the agent orphans them; --resume ends
them by id before it goes on. A lock file keeps two agents off one workspace.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from harness import procfs

LOCK = ".agent/lock"


def exit_on_sigterm() -> None:
    """SIGTERM as Ctrl-C: the agent unwinds, so a harness run in progress is stopped with its stack
    (agent.harness_run), and the run resumes from its last checkpoint with --resume."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        pid = procfs.parent(pid)
        if pid is None:
            break
    return pids


def leftovers(workspace: Path) -> list[int]:
    """Live processes, other than this one and its ancestors, whose arguments name the workspace."""
    root = str(Path(workspace).resolve())
    mine = _ancestors()
    found = []
    for pid in procfs.pids():
        if pid in mine:
            continue
        if any(a == root or a.startswith(root + os.sep) for a in procfs.cmdline(pid)):
            found.append(pid)
    return sorted(found)


def reap(workspace: Path) -> list[int]:
    pids = leftovers(workspace)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = procfs.stat_fields(pid)
    return fields is None or fields[0] != "Z"  # a zombie is dead; its parent just has not reaped it


def acquire(workspace: Path) -> None:
    """Take the workspace's lock; refuses while another live agent holds it."""
    lock = Path(workspace) / LOCK
    if lock.is_file():
        try:
            pid = int(lock.read_text().strip())
        except ValueError:
            pid = 0
        if pid and pid != os.getpid() and alive(pid):
            raise RuntimeError(f"run {Path(workspace).name} is in use by process {pid}")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))


def release(workspace: Path) -> None:
    (Path(workspace) / LOCK).unlink(missing_ok=True)
