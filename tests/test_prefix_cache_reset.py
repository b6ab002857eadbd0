"""A prefix-cache reset counts as done only where the next request shows no hits: checked against
the delay double (tests/stacks/delay_server.py) over HTTP, with a cache that a reset empties
(honest), one that a reset answered 200 leaves as it was (sticky), and stacks that cannot show it."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness import counters
from harness.prefix_cache import HIT_COUNTERS, probe_from, reset_prefix_cache

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "stacks" / "delay_server.py"
PROMPT = " ".join(f"w{i}" for i in range(48))  # 48 words: the probe hits 47 once cached
PROBE = probe_from({"model": "delay", "prompt": PROMPT, "max_tokens": 64, "stream": True, "min_tokens": 64,
                    "stream_options": {"include_usage": True}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stack(tmp_path):
    """start(*flags) -> the base URL of a delay double started with those flags, stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start(*flags: str) -> str:
        port = free_port()
        log = tmp_path / f"delay_{port}.log"
        with open(log, "w") as err:
            procs.append(subprocess.Popen([sys.executable, str(SERVER), "--port", str(port), "--ttft-ms", "1",
                                           "--token-ms", "1", *flags], cwd=ROOT, stdout=subprocess.DEVNULL,
                                          stderr=err))
        deadline = time.monotonic() + 15
        while f"ready on port {port}" not in log.read_text():
            assert procs[-1].poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=5)


def hits(url: str) -> float:
    return counters.read(url)["prefix_cache_hit_tokens"]


def test_honest_reset_is_verified_and_leaves_the_cache_cold(stack):
    url = stack("--prefix-cache", "honest")
    outcome = reset_prefix_cache(url, PROBE, "completions", timeout_s=10)
    assert outcome.ok and outcome.hits_after == 0
    assert outcome.status == "done (verified: the probe hit 0 cached tokens after the reset, 47 before it)"
    before = hits(url)  # the check's own probe is not left cached for the cell that follows
    httpx.post(url + "/v1/completions", json=PROBE)
    assert hits(url) == before


def test_a_reset_answered_200_that_keeps_the_cache_fails(stack):
    url = stack("--prefix-cache", "sticky")
    assert httpx.post(url + "/reset_prefix_cache").status_code == 200  # what the old check believed
    outcome = reset_prefix_cache(url, PROBE, "completions", timeout_s=10)
    assert not outcome.ok and outcome.hits_after == 47
    assert outcome.status == "claimed, not done: the probe hit 47 cached tokens after the reset (47 before it)"


def test_chat_probe(stack):
    url = stack("--prefix-cache", "sticky")
    probe = probe_from({"model": "delay", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8})
    assert not reset_prefix_cache(url, probe, "chat", timeout_s=10).ok
    assert reset_prefix_cache(stack("--prefix-cache", "honest"), probe, "chat", timeout_s=10).ok


def test_a_stack_without_the_route_is_unsupported(stack):
    outcome = reset_prefix_cache(stack("--prefix-cache", "honest", "--no-reset-route"), PROBE, "completions", 10)
    assert (outcome.ok, outcome.status) == (True, "unsupported (HTTP 404)")


def test_what_cannot_be_verified_says_why(stack):
    no_counter = stack()  # the route answers 200; no cache, no hit counter
    assert reset_prefix_cache(no_counter, PROBE, "completions", 10).status == \
        "done (unverified: no prefix-cache hit counter on /metrics)"
    url = stack("--prefix-cache", "sticky")
    assert reset_prefix_cache(url, None, "completions", 10).status == "done (unverified: no probe request)"
    short = probe_from({"model": "delay", "prompt": "one"})  # nothing to reuse: no control hit
    assert reset_prefix_cache(url, short, "completions", 10).status == \
        "done (unverified: the probe hit no cached tokens even before the reset)"
    broken = {"model": "delay", "prompt": PROMPT, "max_tokens": 0}  # the double answers 400
    outcome = reset_prefix_cache(url, broken, "completions", 10)
    assert outcome.ok and outcome.status.startswith("done (unverified: the probe failed: HTTP 400")


def test_a_stack_that_is_gone_never_raises():
    outcome = reset_prefix_cache(f"http://127.0.0.1:{free_port()}", PROBE, "completions", timeout_s=2)
    assert (outcome.ok, outcome.status) == (True, "failed: ConnectError")


def test_a_reset_the_stack_says_it_did_not_do_is_not_done(stack, monkeypatch):
    """vLLM answers 200 with {"success": false} while blocks are held."""
    url = stack("--prefix-cache", "honest")
    answer = httpx.Response(200, json={"success": False}, request=httpx.Request("POST", url))
    monkeypatch.setattr("harness.prefix_cache.httpx.post", lambda *a, **k: answer)
    outcome = reset_prefix_cache(url, PROBE, "completions", 10)
    assert (outcome.ok, outcome.status) == (True, "not done: the stack answered success=false")


def test_the_probe_and_vllm_counter_names():
    assert PROBE == {"model": "delay", "prompt": PROMPT, "max_tokens": 1}
    text = '# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{engine="0",model_name="m"} 48.0\n'
    assert set(counters.parse(text)) & set(HIT_COUNTERS) == {"vllm:prefix_cache_hits_total"}


@pytest.mark.parametrize("mode", ["honest", "sticky"])
def test_a_cell_on_a_stack_whose_reset_keeps_its_cache_fails(stack, tmp_path, mode):
    """Through the bench, as a scenario measures: a sticky cache's cell is a failed row, not a fast one."""
    from harness.bench import Bench
    from harness.launcher import connect
    from harness.loadgen import LoadPoint
    from harness.scenario import load_scenario
    from harness.stack import StackSpec

    url = stack("--prefix-cache", mode)
    spec = StackSpec(name=f"delay-{mode}", supports=("completions",), url=url)
    bench = Bench(run_id="reset", results_dir=tmp_path, scenario=load_scenario(ROOT / "scenarios" / "standard_serving.yaml"),
                  profile="tiny", spec=spec, stack=connect(spec))
    payloads = [{"model": "m", "prompt": PROMPT, "max_tokens": 4, "temperature": 0}] * 3
    row = bench.measure("completions", payloads, LoadPoint(num_prompts=3, concurrency=1), 30)
    assert row.stack_info["prefix_cache_reset"].startswith("done (verified" if mode == "honest" else "claimed, not done")
    assert (row.status, row.error) == (("ok", None) if mode == "honest" else ("failed", f"prefix cache: {row.stack_info['prefix_cache_reset']}"))
