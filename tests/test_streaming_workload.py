"""Setting D's workload, oracle pieces and metrics, without a server: streams are fresh per salt
and on the encoder's grid; the stream judge fails a drifted, reordered or missing partial and a
wrong final; the reuse guard fails a stack that computes as much as a full recompute; the
metrics read chunk latency, finalize latency and real-time streams off the records."""
from __future__ import annotations

from dataclasses import replace

import pytest

from harness.assets import ensure_model
from harness.records import Event, RequestRecord
from harness.transcription import transcripts, usable
from scenarios.workloads.streaming_asr import (chunk_latency, finalize_latency, judge_stream, realtime_streams,
                                               reuse_guard, rtfx, streams, whole)


@pytest.fixture(scope="module")
def audio():
    return ensure_model("speech-clips")


@pytest.fixture(scope="module")
def model():
    return ensure_model("moonshine-streaming-tiny")


def test_streams_are_salted_and_on_the_frame_grid(audio):
    a = streams(audio, 4, [2.0, 3.0], 1.0, 7, "salt-a")
    again = streams(audio, 4, [2.0, 3.0], 1.0, 7, "salt-a")
    b = streams(audio, 4, [2.0, 3.0], 1.0, 7, "salt-b")
    assert [s.audio for s in a] == [s.audio for s in again]
    assert all(x.audio != y.audio for x, y in zip(a, b))
    for s in a:
        assert s.samples % 320 == 0 and 2.0 * 16000 - 320 <= s.samples <= 3.0 * 16000 + 320
        assert s.ends()[-1] == s.samples and s.chunk == 16000
    assert whole(audio, ["espeak-0"], 0.5, 1, "x")[0].samples == usable(int(3.42 * 16000))


def _record(stream, texts, final, latency=0.1, chunk_s=1.0) -> RequestRecord:
    r = RequestRecord(index=0, unit="audio_s", sent_at=0.0)
    r.inputs = [i * chunk_s for i in range(len(texts))]
    r.events = [Event(i * chunk_s + latency, 1.0, {"chunk": c, "text": t}) for i, (c, t) in enumerate(texts)]
    r.events.append(Event(len(texts) * chunk_s + latency, 0.0, {"final": final,
                                                                 "finalize_sent": len(texts) * chunk_s}))
    r.final = final
    return r


def test_stream_judge_fails_drift_order_and_final(audio, model):
    stream = whole(audio, ["espeak-0"], 1.0, 3, "judge")[0]
    refs = transcripts(model, stream.audio, stream.ends())
    texts = [(i, g.text) for i, g in enumerate(refs)]
    assert all(v.ok for v in judge_stream(model, stream, _record(stream, texts, refs[-1].text)))

    # A stale cache: the partial of chunk k is chunk k-1's transcript (a shorter audio prefix).
    for k in range(1, len(texts)):
        drift = texts[:k] + [(k, refs[k - 1].text)] + texts[k + 1:]
        bad = [v for v in judge_stream(model, stream, _record(stream, drift, refs[-1].text)) if not v.ok]
        assert [v.prompt_id.rsplit("/", 1)[1] for v in bad] == [f"chunk-{k}"]

    swapped = [texts[1], texts[0], *texts[2:]]
    assert "order" in judge_stream(model, stream, _record(stream, swapped, refs[-1].text))[0].prompt_id
    twice = [texts[0], *texts]
    assert not judge_stream(model, stream, _record(stream, twice, refs[-1].text))[0].ok
    missing = texts[:-1]
    assert not judge_stream(model, stream, _record(stream, missing, refs[-1].text))[0].ok

    wrong_final = judge_stream(model, stream, _record(stream, texts, refs[-2].text))
    assert [v.prompt_id.rsplit("/", 1)[1] for v in wrong_final if not v.ok] == ["final"]


def test_reuse_guard_needs_reuse_and_fewer_frames(audio):
    measured = streams(audio, 2, [3.0, 3.0], 1.0, 1, "g")
    full = sum(s.full_recompute_frames() for s in measured)
    guard = reuse_guard(measured)
    assert guard.applies(["audio_stream", "encoder_cache"]) and not guard.applies(["audio_stream"])
    assert guard.check(None, {"asr_encoder_frames_reused_total": 100, "asr_encoder_frames_computed_total": full - 100}).ok
    fake = guard.check(None, {"asr_encoder_frames_reused_total": 100, "asr_encoder_frames_computed_total": full})
    assert not fake.ok and "saved nothing" in fake.reason
    assert not guard.check(None, {"asr_encoder_frames_reused_total": 0, "asr_encoder_frames_computed_total": 1}).ok
    assert not guard.check(None, {"asr_encoder_frames_reused_total": 5}).ok  # no computed counter to weigh it


def test_metrics_read_latency_and_real_time_pace(audio):
    stream = streams(audio, 1, [3.0, 3.0], 1.0, 1, "m")[0]
    texts = [(i, "x") for i in range(len(stream.ends()))]
    on_time = _record(stream, texts, "x", latency=0.2)
    late = _record(stream, texts, "x", latency=1.5)  # each partial after the next chunk went out
    assert chunk_latency([on_time])["median_chunk_latency_ms"] == pytest.approx(200)
    assert finalize_latency([on_time])["median_finalize_latency_ms"] == pytest.approx(200)
    held = realtime_streams([on_time, late])
    assert held == {"realtime_streams": 1, "realtime_share": 0.5}
    one_late = replace(on_time, events=[replace(e, t=e.t + (2.0 if i == 1 else 0)) for i, e in enumerate(on_time.events)])
    assert realtime_streams([one_late])["realtime_streams"] == 0
    assert rtfx([on_time])["rtfx"] == pytest.approx(len(texts) / (0.2 * (len(texts) + 1)))
