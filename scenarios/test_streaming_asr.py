"""Setting D: streaming speech recognition. Whole clips one at a time beside two misbehaving
clients, then one cell per number of concurrent clients, every measured partial and final judged
(scenarios/workloads/streaming_asr.py, and the YAML's header)."""
from __future__ import annotations

import asyncio

import pytest

from harness.assets import ensure_model
from harness.bench import progress_bar
from harness.oracle import Verdict
from harness.records import RequestRecord
from harness.speech import clips
from harness.transcription import transcripts
from harness.transports import transport
from scenarios.workloads.streaming_asr import (StreamCheck, Stream, disturbed, judge_offline, judge_stream, offline,
                                               reuse_guard, streams, whole)

pytestmark = pytest.mark.setting("D")


def _accuracy_streams(profile: dict, salt: str | None) -> list[Stream]:
    acc = profile["accuracy"]
    return whole(ensure_model(profile["audio"]), acc["clips"], acc["chunk_s"], acc["seed"], salt)


def _measured_streams(profile: dict, salt: str | None) -> list[Stream]:
    """The same streams at every point (their references are computed once a run)."""
    load = profile["load"]
    return streams(ensure_model(profile["audio"]), load["num_prompts"], load["seconds"], load["chunk_s"], load["seed"],
                   salt)


def hold_references(profile: dict, model_dir, salt: str | None, log) -> None:
    """Every transcript the oracle will ask for, computed before the stack starts (conftest)."""
    wanted = [(s, s.ends()) for s in _accuracy_streams(profile, salt)]
    wanted += [(s, [s.samples]) for s, _ in wanted] + [(s, s.ends()) for s in _measured_streams(profile, salt)]
    with progress_bar("reference transcripts", len(wanted)) as tick:
        for stream, ends in wanted:
            transcripts(model_dir, stream.audio, ends)
            tick()
    log(f"reference transcripts: {sum(len(e) for _, e in wanted)} audio prefixes of {len(wanted)} streams held")


def _wer(profile: dict, stream: Stream, text: str | None) -> float | None:
    import jiwer

    truth = {c.name: c.text for c in clips(ensure_model(profile["audio"]))}.get(stream.clip)
    if not truth or text is None:
        return None
    return float(jiwer.wer(truth.lower(), text.lower() or "<nothing>"))


def test_accuracy(live_bench, profile, salt):
    timeout = profile["request_timeout_s"]
    wholes = _accuracy_streams(profile, salt)
    sender = transport("audio_stream")
    verdicts, problems, report = [], [], []
    for i, stream in enumerate(wholes):
        other = wholes[(i + 1) % len(wholes)]

        def send(session, base_url, payload):
            return sender.send(session, base_url, payload, RequestRecord(index=i))
        record, trouble = asyncio.run(disturbed(live_bench.stack.base_url, stream.payload(realtime=False), other,
                                                send, timeout))
        problems += [f"{stream.id}: {p}" for p in trouble]
        if record.error:
            problems.append(f"{stream.id}: the stream failed: {record.error}")
        else:
            verdicts += judge_stream(live_bench.model_dir, stream, record)
        text, took, error = offline(live_bench.stack.base_url, stream, timeout)
        verdicts.append(judge_offline(live_bench.model_dir, stream, text, error))
        wer = _wer(profile, stream, record.final)
        report.append(f"{stream.id}: {stream.samples / 16000:.1f} s, offline RTFx {stream.samples / 16000 / took:.1f}"
                      + (f", WER {wer:.2f} against the known text" if wer is not None else ""))
    dead = live_bench.stack.death()
    if dead:
        problems.append(f"the stack died: {dead}")
    verdict = Verdict(verdicts)
    live_bench.judged_accuracy(verdict, report + problems)
    live_bench.log(f"{live_bench.spec.name} streaming accuracy: " + "; ".join(report))
    failures = "\n".join(f"  {p.prompt_id}: {p.reason}" for p in verdict.prompts if not p.ok)
    assert not problems, "; ".join(problems)
    assert verdict.ok, f"{verdict.summary}\n{failures}"


def test_performance(cell_bench, profile, load_point, repeat, salt):
    load = profile["load"]
    n, warm = load["num_prompts"], load_point.warmup
    measured = _measured_streams(profile, salt)
    warmups = streams(ensure_model(profile["audio"]), warm, load["seconds"], load["chunk_s"], load["seed"], salt, tag="w")
    payloads = [s.payload(load["realtime"]) for s in warmups + measured]
    row = cell_bench.measure(load["endpoint"], payloads, load_point, profile["request_timeout_s"], repeat=repeat,
                             guard=reuse_guard(measured), check=StreamCheck(measured))
    m = row.metrics
    assert m["completed"] == n, f"{m['failed']} of {n} streams failed: {row.error}"
    assert row.status == "ok", row.error
