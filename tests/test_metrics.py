"""Metric formulas on hand-made records with known answers."""
import numpy as np
import pytest

from harness.arrivals import arrival_offsets
from harness.metrics import itls, resolve, summarize, tpot, unit_gaps
from harness.errors import HarnessError
from harness.records import Event, RequestRecord


def rec(i, sent, times, tokens, usage=None, error=None, unit="tokens"):
    return RequestRecord(index=i, unit=unit, sent_at=sent, events=[Event(t, n) for t, n in zip(times, tokens)],
                         reported_units=usage, error=error, input_units=10)


def test_tpot_uses_usage_count_and_excludes_first_token():
    r = rec(0, 0.0, [0.2, 0.26, 0.32], [1, 3, 3], usage=7)
    assert r.ttft == pytest.approx(0.2)
    assert tpot(r) == pytest.approx(0.12 / 6)


def test_itl_is_per_chunk_as_vllm_and_token_gap_spreads_it_over_the_chunk_tokens():
    r = rec(0, 0.0, [0.2, 0.26, 0.30], [1, 3, 2])
    assert itls(r) == pytest.approx([0.06, 0.04])
    assert unit_gaps(r) == pytest.approx([0.02, 0.02, 0.02, 0.02, 0.02])
    m = summarize([r])
    assert m["median_itl_ms"] == pytest.approx(50) and m["median_token_gap_ms"] == pytest.approx(20)


def test_token_count_source_is_reported():
    assert rec(0, 0, [0.1], [1], usage=1).unit_count_source == "usage"
    r = rec(0, 0, [0.1, 0.2], [1, 1])
    assert r.output_units == 2 and r.unit_count_source == "one_per_event"


def test_summary_throughput_over_the_window_and_failures():
    records = [rec(0, 0.0, [0.5, 1.0], [1, 1], usage=2), rec(1, 1.0, [0.5, 2.0], [1, 3], usage=4),
               rec(2, 1.5, [], [], error="HTTP 500: boom")]
    m = summarize(records, slos_ms={"ttft": 600})
    assert m["completed"] == 2 and m["failed"] == 1
    assert m["duration"] == pytest.approx(3.0)  # first send 0.0 -> last token 1.0 + 2.0
    assert m["output_throughput"] == pytest.approx(6 / 3.0)
    assert m["median_ttft_ms"] == pytest.approx(500)
    assert m["request_goodput"] == pytest.approx(2 / 3.0)
    assert m["errors"] == {"HTTP 500: boom": 1}
    assert m["token_count_source"] == "usage"


def test_other_units_take_their_own_names_and_a_closing_event_ends_the_request():
    # An audio stream: two partials of 2 s of audio each, then a final that adds none.
    audio = rec(0, 0.0, [2.3, 4.2, 4.5], [2.0, 2.0, 0.0], unit="audio_s")
    m = summarize([audio])
    assert m["unit"] == "audio_s" and m["total_output_audio_s"] == 4.0 and "total_output_tokens" not in m
    assert m["median_ttft_ms"] == pytest.approx(2300) and m["median_e2el_ms"] == pytest.approx(4500)
    assert m["median_time_per_unit_ms"] == pytest.approx((4500 - 2300) / 3) and "median_tpot_ms" not in m
    assert m["total_token_throughput"] is None  # no tokens to add the prompt's to
    image = summarize([rec(0, 0.0, [1.5], [1], unit="images")])
    assert image["total_output_images"] == 1 and image["median_e2el_ms"] == pytest.approx(1500)


def test_a_scenario_metric_is_loaded_by_name_and_computed_on_the_cell():
    fns = resolve({"median_tok_per_s": "scenarios.workloads.code_edit:median_tok_per_s"})
    records = [rec(0, 0.0, [0.1, 0.5], [1, 9]), rec(1, 1.0, [0.1, 1.5], [1, 29], usage=30)]
    # median(10, 30) tokens / median(0.5 s, 1.5 s) = 20 / 1.0
    assert summarize(records, extra=fns)["median_tok_per_s"] == pytest.approx(20.0)
    assert "median_tok_per_s" not in summarize(records)  # not the harness's own: only where a scenario names it
    with pytest.raises(HarnessError, match="cannot load"):
        resolve({"x": "scenarios.workloads.code_edit:no_such_metric"})


def test_no_completed_request_gives_none_not_zero():
    m = summarize([rec(0, 0.0, [], [], error="x")])
    assert m["median_ttft_ms"] is None and m["output_throughput"] is None


def test_arrivals_are_rescaled_to_n_over_rate_and_poisson_shaped():
    off = arrival_offsets(2000, rate=4.0, burstiness=1.0, seed=3)
    assert off[-1] == pytest.approx(500.0)
    gaps = np.diff(off)
    assert np.mean(gaps) == pytest.approx(1 / 4.0, rel=0.01)
    # Exponential gaps: P(gap < mean) = 1 - 1/e; evenly spaced or bunched sends would not give it.
    assert np.mean(gaps < np.mean(gaps)) == pytest.approx(1 - np.exp(-1), abs=0.03)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.1)  # exponential: CV = 1
    smooth = np.diff(arrival_offsets(2000, rate=4.0, burstiness=8.0, seed=3))
    assert np.std(smooth) / np.mean(smooth) < 0.5
    assert np.array_equal(arrival_offsets(5, None), np.zeros(5))
    assert np.array_equal(off, arrival_offsets(2000, rate=4.0, burstiness=1.0, seed=3))
