"""Processes as Linux's /proc shows them: one reading of /proc/<pid>/stat for everyone who asks
who a process's parent or group is, when it started, or whether it still runs (a zombie does not);
one of /proc/<pid>/cmdline for who asks which processes name something in their arguments."""
from __future__ import annotations

import os
from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """proc(5)'s stat fields from the state on (field 3 is index 0), or None where there is no such process.
    The name, field 2, may hold spaces and parentheses, so the fields are read after its last ')'."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"  # a zombie is dead; its parent just has not reaped it


def parent(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def started_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot, field 22), or None where there is no such process."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def group(pgid: int) -> list[int]:
    """The running members of a process group (a launched stack's session: it and its workers)."""
    return sorted(pid for pid in pids()
                  if (fields := stat_fields(pid)) is not None and fields[0] != "Z" and int(fields[2]) == pgid)


def cmdline(pid: int) -> list[str]:
    """A process's arguments ([] where there is no such process, or for a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def naming(text: str) -> list[int]:
    """Running processes, other than this one, whose arguments joined by spaces contain `text`."""
    me = os.getpid()
    return sorted(pid for pid in pids() if pid != me and text in " ".join(cmdline(pid)) and running(pid))


def rss_mib(pids: list[int]) -> float:
    """Resident memory of these processes together, in MiB (those gone count nothing)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024
