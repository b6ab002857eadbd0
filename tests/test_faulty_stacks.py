"""Stacks with one fault each (tests/stacks/delay_server.py --fault) give a row that says what went
wrong, within the cell's deadline, keep what they measured before it, and leave no process behind."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness import ledger, procfs
from harness.bench import Bench
from harness.errors import StackError
from harness.launcher import launch
from harness.loadgen import LoadPoint
from harness.scenario import load_scenario
from harness.stack import REPO_ROOT, load_spec

DELAY = REPO_ROOT / "tests" / "stacks" / "delay.yaml"
SCENARIO = REPO_ROOT / "scenarios" / "standard_serving.yaml"
TIMEOUT_S = 4.0  # each request's deadline
POINT = LoadPoint(num_prompts=6, concurrency=2, warmup=0)


def faulty(fault: str, startup_timeout_s: float = 30):
    spec = load_spec(DELAY)
    return spec.__class__(**{**spec.__dict__, "name": f"delay-{fault}", "command": [*spec.command, "--fault", fault],
                             "startup_timeout_s": startup_timeout_s})


def measure(fault: str, tmp_path: Path):
    """One cell on the faulty stack: (its row, seconds it took, the stack's pid)."""
    with launch(faulty(fault), "unused", tmp_path / "logs") as stack:
        bench = Bench(run_id="faults", results_dir=tmp_path / "results", scenario=load_scenario(SCENARIO),
                      profile="tiny", spec=stack.spec, stack=stack, model_dir=None)
        payloads = [{"prompt": f"p{i}", "max_tokens": 8, "stream": True} for i in range(POINT.num_prompts)]
        started = time.monotonic()
        try:
            row = bench.measure("completions", payloads, POINT, request_timeout_s=TIMEOUT_S)
        except StackError:
            row = bench.rows[-1]
        took, pid = time.monotonic() - started, stack.process.pid
    return row, took, pid


@pytest.mark.parametrize("fault, status, says", [
    ("hang-after-headers", "failed", "timed out before any output"),
    ("error-500", "partial", "500"),
    ("close-early", "failed", ""),
    ("bad-usage", "failed", "usage overstates its output"),
])
def test_a_faulty_stack_gets_a_row_that_says_why_within_its_deadline(tmp_path, fault, status, says):
    row, took, pid = measure(fault, tmp_path)
    assert row.status == status and says in (row.error or ""), (row.status, row.error)
    # every request ran against its own deadline, two at a time: never more than three rounds of it
    assert took < TIMEOUT_S * POINT.num_prompts / POINT.concurrency + 5, took
    if status == "partial":
        assert row.metrics["completed"] == 3 and row.metrics["failed"] == 3  # what it measured is kept
    assert procfs.group(pid) == []


def test_a_stack_that_never_gets_healthy_is_reported_at_its_startup_deadline(tmp_path, monkeypatch):
    launched = []
    real = ledger.record
    monkeypatch.setattr(ledger, "record", lambda name, process: launched.append(process.pid) or real(name, process))
    started = time.monotonic()
    with pytest.raises(StackError, match="not healthy") as caught:
        launch(faulty("hang-before-health", startup_timeout_s=5), "unused", tmp_path / "logs")
    assert time.monotonic() - started < 5 + 8 and "last lines" in str(caught.value)
    assert len(launched) == 1 and procfs.group(launched[0]) == []


def test_a_stack_that_takes_its_port_late_is_waited_for(tmp_path):
    row, _, pid = measure("late-port", tmp_path)
    assert row.status == "ok" and row.metrics["completed"] == POINT.num_prompts, row.error
    assert procfs.group(pid) == []


def test_a_stack_that_ignores_sigterm_is_killed_at_the_end_of_its_grace(tmp_path):
    with launch(faulty("ignore-sigterm"), "unused", tmp_path / "logs") as stack:
        pid = stack.process.pid
        started = time.monotonic()
        stack.stop(grace_s=2)
        took = time.monotonic() - started
    assert 2 <= took < 6 and stack.process.returncode == -9, (took, stack.process.returncode)
    assert procfs.group(pid) == []
