"""The load generator's ceiling and its clock's error (python -m harness capacity) run and count
every request and chunk; their numbers are benchmarks, printed, never asserted."""
from __future__ import annotations

import socket

import pytest

from harness import capacity
from harness.__main__ import main
from harness.capacity import clock_error, measure
from harness.errors import HarnessError


def test_every_request_to_the_instant_server_completes_and_is_timed():
    m = measure(requests=200, concurrency=16)
    assert m["completed"] == 200 and m["failed"] == 0
    assert m["req_per_s"] > 0 and 0 < m["latency_p50_ms"] <= m["latency_p99_ms"]


def test_every_chunk_is_matched_to_the_servers_stamp_and_never_read_before_it():
    c = clock_error(concurrency=4, requests=8, tokens=6, token_ms=5)
    assert c["completed"] == 8 and c["chunks"] == 8 * 6
    assert 0 < c["read_late_ms"]["p50"] <= c["read_late_ms"]["p99"] <= c["read_late_ms"]["max"]
    assert c["send_to_read_ms"]["p50"] > 0  # the server reads a request after the harness sent it


def test_the_command_prints_a_line_per_reading(capsys):
    assert main(["capacity", "--requests", "50", "--concurrency", "4", "--clock-concurrency", "2",
                 "--clock-requests", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("load generator: ") and "50 of 50 streamed requests" in lines[0]
    assert lines[1].startswith("clock at 2 streams (128 chunks") and len(lines) == 2


def test_a_server_that_cannot_start_is_one_error_not_a_refused_connection_later(monkeypatch, capfd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(capacity, "free_port", lambda: taken.getsockname()[1])
        with pytest.raises(HarnessError, match=r"no-op server exited \(code 1\).*address already in use"):
            measure(requests=10, concurrency=2)
    assert "Traceback" not in capfd.readouterr().err  # the server's own failure is that one line
