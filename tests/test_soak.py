"""The soak (python -m harness soak) against the delay double: mixed, cancelled and abandoned
streams are counted, memory is read, and a stack failing requests is caught."""
from __future__ import annotations

from harness.launcher import launch
from harness.soak import soak
from harness.stack import REPO_ROOT, load_spec

DELAY = REPO_ROOT / "tests" / "stacks" / "delay.yaml"


def quick(**args):
    spec = load_spec(DELAY)
    spec = spec.__class__(**{**spec.__dict__, "command": [*spec.command, "--ttft-ms", "5", "--token-ms", "1", *args.get("extra", [])]})
    return spec


def test_a_soak_counts_every_kind_of_request_and_reads_the_stack_s_memory(tmp_path):
    lines = []
    with launch(quick(), "unused", tmp_path / "logs") as stack:
        rounds, end = soak(stack, "delay", rounds=2, per_round=60, concurrency=8, report=lines.append)
    assert len(rounds) == 2 and len(lines) == 2
    for r in rounds:
        assert not r.errors, r.errors
        assert r.sent == 60 and len(r.latencies_ms) + r.cancelled + r.vanished == 60
        assert r.cancelled and r.vanished and r.rss_mb > 10  # a Python server holds tens of MiB
    assert end["last_request"] == 200 and end["metrics"]["requests_total"] >= 100


def test_a_stack_failing_requests_fails_the_soak(tmp_path):
    with launch(quick(extra=["--fault", "error-500"]), "unused", tmp_path / "logs") as stack:
        rounds, _ = soak(stack, "delay", rounds=1, per_round=40, concurrency=4, report=lambda _: None)
    assert rounds[0].errors and rounds[0].errors[0].startswith("HTTP 500")
