"""hf-reference on a speech model (the tiny moonshine_streaming), launched from its spec as the
harness launches it: every partial and the final are the transformers reference's transcripts of
the audio so far, the offline route agrees, and /metrics counts a full recompute per chunk."""
from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest
import torch

from harness import counters
from harness.assets import ensure_model
from harness.launcher import launch
from harness.speech import clips
from harness.stack import resolve_stack
from harness.transcription import transcribe, usable

from asr_wire import CLIP, ends, stream  # noqa: E402 - pytest puts tests/ on sys.path

pytestmark = pytest.mark.slow  # a real (tiny) model behind a launched server



@pytest.fixture(scope="module")
def model_dir():
    torch.set_num_threads(1)
    return ensure_model("moonshine-streaming-tiny")


@pytest.fixture(scope="module")
def clip():
    return next(c for c in clips(ensure_model("speech-clips")) if c.name == CLIP)


@pytest.fixture(scope="module")
def stack(model_dir, tmp_path_factory):
    spec = resolve_stack("hf-reference")
    spec = dataclasses.replace(spec, command=spec.command + ("--threads", "1"))  # shared CPUs
    with launch(spec, model_dir, tmp_path_factory.mktemp("hf-reference-asr")) as running:
        yield running.base_url


def test_partials_and_final_are_the_reference_transcripts(stack, model_dir, clip):
    samples = clip.samples()
    before = counters.read(stack)
    messages = asyncio.run(stream(stack, samples))
    after = counters.read(stack)
    expected = [{"type": "partial", "chunk": i, "samples": end, "text": transcribe(model_dir, samples[:end]).text}
                for i, end in enumerate(ends(samples))]
    assert messages[:-1] == expected
    assert messages[-1] == {"type": "final", "text": transcribe(model_dir, samples).text, "samples": len(samples)}
    assert len({m["text"] for m in expected}) == len(expected)  # each chunk's transcript is a new one
    # A full recompute: every chunk encodes its whole buffer again; the final reuses the last partial.
    assert after["asr_encoder_frames_computed_total"] - before["asr_encoder_frames_computed_total"] == \
        sum(usable(end) // 320 for end in ends(samples))
    assert after["asr_encoder_frames_reused_total"] == 0


def test_transcriptions_route_gives_the_reference_transcript(stack, model_dir, clip):
    response = httpx.post(stack + "/v1/audio/transcriptions", data={"model": "moonshine-streaming-tiny"},
                          files={"file": (clip.path.name, clip.path.read_bytes(), "audio/wav")}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json() == {"text": transcribe(model_dir, clip.samples()).text}


def test_it_names_its_model_and_counts_streams(stack):
    assert httpx.get(stack + "/v1/models").json()["data"][0]["id"] == "moonshine-streaming-tiny"
    assert "asr_streams_opened_total" in counters.read(stack)
