"""The load generator's ceiling (python -m harness capacity) runs and counts every request; its
number is a benchmark, printed, never asserted."""
from __future__ import annotations

from harness.__main__ import main
from harness.capacity import measure


def test_every_request_to_the_instant_server_completes_and_is_timed():
    m = measure(requests=200, concurrency=16)
    assert m["completed"] == 200 and m["failed"] == 0
    assert m["req_per_s"] > 0 and 0 < m["latency_p50_ms"] <= m["latency_p99_ms"]


def test_the_command_prints_one_line(capsys):
    assert main(["capacity", "--requests", "50", "--concurrency", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("load generator: ") and "50 of 50 streamed requests" in out
