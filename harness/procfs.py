"""Processes as Linux's /proc shows them: one reading of /proc/<pid>/stat for everyone who asks
who a process's parent or group is, when it started, or whether it still runs (a zombie does not)."""
from __future__ import annotations

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


def group(pgid: int) -> list[int]:
    """The running members of a process group (a launched stack's session: it and its workers)."""
    return sorted(pid for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
                  if (fields := stat_fields(pid)) is not None and fields[0] != "Z" and int(fields[2]) == pgid)


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
