"""SIGTERM or Ctrl-C to a harness command that launched a stack itself (soak, instrument): the
command prints one line, exits 130 and stops its stack; nothing is left running."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness import procfs
from harness.stack import REPO_ROOT


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_soak_stops_its_stack(tmp_path, sig):
    ttft = f"{30 + sig}.{os.getpid()}"  # this test's stack, told apart from any other delay server
    spec = tmp_path / "marked.yaml"
    spec.write_text(json.dumps({"name": "marked", "command": ["python", "tests/stacks/delay_server.py", "--ttft-ms",
                                                              ttft, "--port", "{port}"],
                                "startup_timeout_s": 30, "supports": ["completions"]}))
    marker = f"delay_server.py --ttft-ms {ttft} "
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
