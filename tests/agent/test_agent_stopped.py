"""SIGTERM or Ctrl-C to the agent while the harness judges a stack: the harness's run (its own
process group) is stopped, and the stack it launched with it; nothing is left running."""
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

DELAY = ["python", "tests/stacks/delay_server.py", "--ttft-ms", "{ttft}", "--token-ms", "20"]
JUDGE = """
import sys
from pathlib import Path
from agent import processes
from agent.harness_run import run_scenario
processes.exit_on_sigterm()
run_scenario("standard_serving", [sys.argv[1]], "smoke", Path(sys.argv[2]), "stopped", select="performance")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_agent_stops_its_harness_run_and_stack(tmp_path, sig):
    ttft = f"{60 + sig}.{os.getpid()}"  # this test's stack, told apart from any other delay server
    spec = tmp_path / "marked.yaml"
    command = [c.replace("{ttft}", ttft) for c in DELAY] + ["--port", "{port}"]
    spec.write_text(json.dumps({"name": "marked", "command": command, "startup_timeout_s": 30,
                                "supports": ["completions"]}))
    marker = f"delay_server.py --ttft-ms {ttft} "
    agent = subprocess.Popen([sys.executable, "-c", JUDGE, str(spec), str(tmp_path / "results")], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    try:
        deadline = time.monotonic() + 180
        while not procfs.naming(marker) and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.2)
        assert procfs.naming(marker), "the stack never started"
        assert procfs.naming(f"--stack {spec}"), "no harness run under the agent"
        agent.send_signal(sig)
        out, _ = agent.communicate(timeout=60)
        assert agent.returncode != 0
        # The agent waits for its harness run to stop: by its exit, both are gone. (Without that the
        # orphaned harness ran on until its next write to the dead agent's pipe, seconds later.)
        deadline = time.monotonic() + 3
        while (procfs.naming(marker) or procfs.naming(f"--stack {spec}")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not procfs.naming(marker), f"the stack outlived the agent:\n{out[-2000:]}"
        assert not procfs.naming(f"--stack {spec}"), f"the harness outlived the agent:\n{out[-2000:]}"
    finally:  # whatever failed above, nothing of this test stays behind
        agent.kill()
        for pid in procfs.naming(f"--stack {spec}") + procfs.naming(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_harness_run_past_its_timeout_is_stopped_with_its_stack(tmp_path):
    # The timeout used to SIGKILL the harness run, whose stack (a session of its own) then ran on.
    from agent.harness_run import run_scenario

    ttft = f"600000.{os.getpid()}"  # the warm-up request hangs: the run is still measuring at its timeout
    spec = tmp_path / "slow.yaml"
    command = [c.replace("{ttft}", ttft) for c in DELAY] + ["--port", "{port}"]
    spec.write_text(json.dumps({"name": "slow", "command": command, "startup_timeout_s": 30,
                                "supports": ["completions"]}))
    marker = f"delay_server.py --ttft-ms {ttft} "
    try:
        run = run_scenario("standard_serving", [str(spec)], "smoke", tmp_path / "results", "late",
                           select="performance", timeout_s=60)  # the stack is up well before
        assert run.timed_out and run.returncode != 0, run.output
        log = tmp_path / "results" / "runs" / "late" / "logs" / "slow.log"
        assert "delay_server ready" in log.read_text(), log.read_text()  # it was up: stopped, not never started
        assert not procfs.naming(marker), "the stack outlived its timed-out harness run"
    finally:
        for pid in procfs.naming(marker):
            os.kill(pid, signal.SIGKILL)
