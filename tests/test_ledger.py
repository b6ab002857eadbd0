"""A harness killed with SIGKILL leaves its stack running (the stack has a session of its own);
the next launch stops it, and never a stack whose harness is alive (harness/ledger.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ledger, procfs
from harness.launcher import launch
from harness.stack import load_spec

REPO = Path(__file__).resolve().parent.parent
DELAY = REPO / "tests" / "stacks" / "delay.yaml"
HARNESS = ("import sys, time; from pathlib import Path; from harness.launcher import launch; "
           "from harness.stack import load_spec; "
           "stack = launch(load_spec(sys.argv[1]), '.', Path(sys.argv[2])); "
           "print('up', stack.process.pid, flush=True); time.sleep(600)")


@pytest.fixture
def own_ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def harness(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A harness process that launched the delay stack and waits: (it, the stack's pid)."""
    proc = subprocess.Popen([sys.executable, "-c", HARNESS, str(DELAY), str(tmp_path / "logs")], cwd=REPO,
                            env={**os.environ}, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("up "), line
    return proc, int(line.split()[1])


def gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while procfs.running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not procfs.running(pid)


def test_a_killed_harness_s_stack_is_stopped_by_the_next_launch_a_live_one_s_is_not(own_ledger):
    alive, alive_stack = harness(own_ledger)
    killed, orphan = harness(own_ledger)
    try:
        assert len(list(ledger.folder().glob("*.json"))) == 2
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        time.sleep(0.5)
        assert procfs.running(orphan)  # what a kill -9 of the harness used to leave behind
        with launch(load_spec(DELAY), ".", own_ledger / "logs-next") as stack:  # the next run
            assert gone(orphan), "the orphaned stack is still running"
            assert procfs.running(alive_stack), "a live harness's stack was stopped"
            records = {json.loads(p.read_text())["pid"] for p in ledger.folder().glob("*.json")}
            assert records == {alive_stack, stack.process.pid}
        assert {json.loads(p.read_text())["pid"] for p in ledger.folder().glob("*.json")} == {alive_stack}
    finally:
        for proc in (alive, killed):
            proc.kill()
            proc.wait()
        ledger.reap()
    assert gone(alive_stack) and not list(ledger.folder().glob("*.json"))


def test_a_record_whose_pid_was_reused_is_dropped_without_a_kill(own_ledger):
    # A record from a harness long gone, naming this very test process with another start time:
    # the pid now belongs to someone else, who must not be killed.
    path = ledger.folder() / "stale.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": "old", "pid": os.getpid(), "started": 1, "harness": 999999999,
                                "harness_started": 1}))
    assert ledger.reap() == [] and not path.exists()


def test_a_signal_between_the_stack_s_start_and_its_record_stops_the_stack(own_ledger, monkeypatch):
    # Ctrl-C or SIGTERM (a KeyboardInterrupt in the harness) landing right after the process started: the
    # launch used to return nothing to stop and leave the stack running until the next launch reaped it.
    started = []

    def interrupted(name, process):
        started.append(process.pid)
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(ledger, "record", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            launch(load_spec(DELAY), ".", own_ledger / "logs")
        assert len(started) == 1 and gone(started[0], within_s=5), "the stack outlived its interrupted launch"
    finally:
        for pid in started:  # a failure here leaves nothing running
            if procfs.running(pid):
                os.killpg(pid, signal.SIGKILL)


def test_at_its_exit_a_harness_stops_the_stacks_it_left_running_and_no_other(own_ledger):
    other, others_stack = harness(own_ledger)  # another live harness's stack
    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        record = ledger.record("mine", mine)
        stopped = ledger.stop_own()
        assert len(stopped) == 1 and f"pid {mine.pid}" in stopped[0], stopped
        assert mine.wait(timeout=5) == -signal.SIGKILL and not record.exists()
        assert procfs.running(others_stack), "another harness's stack was stopped"
        assert ledger.stop_own() == []
    finally:
        mine.kill()
        mine.wait()
        other.kill()
        other.wait()
        ledger.reap()
    assert gone(others_stack)
