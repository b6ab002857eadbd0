"""A child process in a session of its own: a stack, or a harness run (a pytest run that launches stacks).

Ctrl-C at a terminal signals the whole foreground group, and Python's `subprocess.run` answers an
interrupt by killing its child with SIGKILL a quarter of a second later: a pytest run killed so
never tears down the stacks it launched (each runs in a session of its own), and they outlive
the command. Here the child never sees the terminal's signal; on an interrupt (Ctrl-C or SIGTERM
to us) it gets SIGTERM, which the harness turns into its orderly teardown, and SIGKILL only if
that takes longer than `grace_s`.
"""
from __future__ import annotations

import os
import signal
import subprocess

GRACE_S = 30.0  # a pytest run stops each stack it launched within ~10 s (harness.launcher)


def start(cmd: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen(cmd, start_new_session=True, **popen)


def stop(proc: subprocess.Popen, grace_s: float = GRACE_S):
    """SIGTERM to the child's process group, SIGKILL after grace_s; then SIGKILL to what is left of the
    group (workers the child started and did not stop). Returns the rest of its stdout where that is a
    pipe to us (read while it stops, so a full pipe cannot hold its teardown up), else None."""
    out = None
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            out, _ = proc.communicate(timeout=grace_s)
    signal_group(proc, signal.SIGKILL)
    return out


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(cmd: list[str], grace_s: float = GRACE_S, **popen) -> int:
    """Run cmd to its end and return its exit code; an interrupt stops it (and what it launched) first."""
    proc = start(cmd, **popen)
    try:  # nothing between the start and here: an interrupt that lands after it stops the child too
        return proc.wait()
    except BaseException:
        stop(proc, grace_s)
        raise
