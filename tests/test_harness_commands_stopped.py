"""SIGTERM or Ctrl-C to a harness command that launched a stack itself (soak, instrument): the
command prints one line, exits 130 and stops its stack; nothing is left running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from harness import procfs
from harness.stack import REPO_ROOT
from tests.doubles import marked_delay_stack


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_soak_stops_its_stack(tmp_path, sig):
    spec, marker = marked_delay_stack(tmp_path, f"{30 + sig}.{os.getpid()}")  # told apart from other delay servers
    proc = subprocess.Popen([sys.executable, "-m", "harness", "soak", "--stack", str(spec), "--scenario",
                             "standard_serving", "--rounds", "50", "--results-dir", str(tmp_path)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    try:
        deadline = time.monotonic() + 120
        while not procfs.naming(marker) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert procfs.naming(marker), "the stack never started"
        time.sleep(2)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, out[-2000:]
        assert "interrupted" in out and "Traceback" not in out, out[-2000:]
        assert not procfs.naming(marker), "the stack outlived the command"
    finally:
        proc.kill()
        for pid in procfs.naming(marker):
            os.kill(pid, signal.SIGKILL)


SIGNAL_INSIDE_A_TASK = """
import asyncio, os, signal
from harness.__main__ import stop_signals

async def spin(kill):
    await asyncio.sleep(0.01)
    if kill:
        os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(200_000):  # the handler runs while this task's step does
        pass
    await asyncio.sleep(5)

async def main():
    await asyncio.gather(*(spin(i == 3) for i in range(8)))

try:
    with stop_signals():
        asyncio.run(main())
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["from-a-terminal", "sigint-ignored"])
def test_sigterm_landing_inside_an_asyncio_task_unwinds_without_a_traceback(sigint):
    """The race CI once lost: SIGTERM raised as KeyboardInterrupt inside a running task made asyncio log that
    task's exception with a traceback; it must unwind as Ctrl-C does, by cancelling the main task, also where the
    parent ignored SIGINT (a background job of a non-interactive shell, as CI runs the tests)."""
    done = subprocess.run([sys.executable, "-c", SIGNAL_INSIDE_A_TASK], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    assert done.stdout.strip() == "interrupted", done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr


# A pytest run as compare and the agent start one: it launches a stack (its own session) and tears
# it down when SIGTERM arrives, as conftest.py makes pytest do.
HARNESS_RUN = """
import signal, sys, time
from pathlib import Path
from harness.launcher import launch
from harness.stack import load_spec

def stopped(*_):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, stopped)
with launch(load_spec(sys.argv[1]), ".", Path(sys.argv[2])) as stack:
    print("up", stack.process.pid, flush=True)
    time.sleep(600)
"""
RUNNER = """
import sys
from harness import session
from harness.__main__ import stop_signals
try:
    with stop_signals():
        session.run([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl-c-at-a-terminal", "sigterm-to-the-command"])
def test_a_stopped_command_stops_its_pytest_run_and_that_run_s_stack(tmp_path, to_group):
    # subprocess.run killed its child 0.25 s after an interrupt (SIGKILL, so no teardown), and a SIGTERM to
    # the command alone never reached the child: either way the stack the run launched outlived the command.
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, HARNESS_RUN, str(REPO_ROOT / "tests/stacks/delay.yaml"),
                               str(tmp_path / "logs")], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)  # its own group, as a terminal's foreground job
    stack = None
    try:
        line = runner.stdout.readline()
        assert line.startswith("up "), line
        stack = int(line.split()[1])
        if to_group:
            os.killpg(runner.pid, signal.SIGINT)
        else:
            runner.send_signal(signal.SIGTERM)
        out, _ = runner.communicate(timeout=60)
        assert "interrupted" in out, out
        assert not procfs.running(stack), "the stack outlived the command that ran its pytest run"
    finally:
        runner.kill()
        if stack and procfs.running(stack):
            os.killpg(stack, signal.SIGKILL)
