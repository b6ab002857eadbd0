"""The harness and `vllm bench serve` read the same numbers off a stack with known timings (the
delay double: TTFT 200 ms, 20 ms a token), and a disagreement past 5% is an error."""
from __future__ import annotations

from pathlib import Path

import pytest

import harness.instrument
from harness.environments import engine_info
from harness.errors import HarnessError
from harness.instrument import Workload, compare

STACKS = Path(__file__).parent / "stacks"
pytestmark = pytest.mark.skipif(engine_info("vllm") is None, reason="the vLLM engine environment is not installed")
WORK = Workload([f"Say something about the number {i}.\n" for i in range(4)], output_len=12, concurrency=1)


@pytest.fixture(scope="module")
def tokenizer():
    from harness.assets import ensure_model

    return ensure_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def delay(tmp_path_factory):
    from harness.launcher import launch
    from harness.stack import load_spec

    with launch(load_spec(STACKS / "delay.yaml"), "unused", tmp_path_factory.mktemp("logs")) as stack:
        yield stack


def test_both_instruments_read_the_double_alike(delay, tokenizer):
    result = compare(delay.base_url, "delay", tokenizer, WORK, repeats=1)
    assert 195 < result["median_ttft_ms"]["vllm"] < 215 and 19 < result["median_tpot_ms"]["vllm"] < 22, result
    for metric, r in result.items():
        assert abs(r["difference"]) < harness.instrument.TOLERANCE, (metric, r)


def test_a_harness_that_reads_differently_is_caught(delay, tokenizer, monkeypatch):
    honest = harness.instrument.harness_reading
    monkeypatch.setattr(harness.instrument, "harness_reading",
                        lambda *a: honest(*a) | {"median_tpot_ms": honest(*a)["median_tpot_ms"] * 0.9})
    result = compare(delay.base_url, "delay", tokenizer, WORK, repeats=1)
    assert result["median_tpot_ms"]["difference"] < -harness.instrument.TOLERANCE
    with pytest.raises(HarnessError, match="differ by more than 5% on median_tpot_ms"):
        harness.instrument.report(result)


@pytest.mark.parametrize("temperature", [0.0, None], ids=["greedy", "server-default"])
def test_both_instruments_send_the_same_sampling(delay, tokenizer, temperature):
    """`--temperature server` leaves the temperature out of both instruments' requests, as `vllm bench
    serve` does when not told one; the default sends 0 through both. The double counts the greedy
    requests it got (each instrument sends one warm-up request beside the prompts)."""
    import httpx

    def counts():
        m = httpx.get(delay.base_url + "/metrics", timeout=10).json()
        return m["requests_total"], m["greedy_requests"]

    work = Workload(WORK.prompts, WORK.output_len, WORK.concurrency, temperature)
    total, greedy = counts()
    compare(delay.base_url, "delay", tokenizer, work, repeats=1)
    sent = 2 * (len(work.prompts) + 1)
    assert counts() == (total + sent, greedy + (sent if temperature == 0 else 0))
