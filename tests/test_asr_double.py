"""The setting-D test double (tests/stacks/asr_double.py), launched from its spec as the harness
launches stacks: honest answers the transformers reference's transcripts, and each other mode
differs from honest on the wire (or in its counters) in its one fault only. A test of the double,
not of the oracle."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from harness import counters
from harness.assets import ensure_model
from harness.launcher import launch
from harness.speech import clips
from harness.stack import REPO_ROOT, load_spec
from harness.transcription import transcribe, usable

from asr_wire import CLIP, ends, stream  # noqa: E402 - pytest puts tests/ on sys.path

pytestmark = pytest.mark.slow  # a real (tiny) model behind each launched double

SPEC = REPO_ROOT / "tests" / "stacks" / "asr_double.yaml"
DRIFT = 16 * 320


def spec_for(mode: str):
    """The shipped spec with its `--mode honest` replaced, and one torch thread (shared CPUs)."""
    spec = load_spec(SPEC)
    command = tuple(mode if part == "honest" else part for part in spec.command)
    return dataclasses.replace(spec, name=f"asr-{mode}", command=command + ("--threads", "1"))


@pytest.fixture(scope="module")
def model_dir():
    torch.set_num_threads(1)
    return ensure_model("moonshine-streaming-tiny")


@pytest.fixture(scope="module")
def samples():
    return next(c for c in clips(ensure_model("speech-clips")) if c.name == CLIP).samples()


def run(mode: str, model_dir, samples, tmp_path) -> tuple[list[dict], dict[str, float]]:
    """The mode's messages for the clip, and how its counters moved."""
    with launch(spec_for(mode), model_dir, tmp_path / "logs") as stack:
        before = counters.read(stack.base_url)
        messages = asyncio.run(stream(stack.base_url, samples))
        return messages, counters.delta(before, counters.read(stack.base_url))


@pytest.fixture(scope="module")
def honest(model_dir, samples, tmp_path_factory):
    return run("honest", model_dir, samples, tmp_path_factory.mktemp("asr-honest"))


def test_honest_answers_the_reference_and_counts_a_full_recompute(honest, model_dir, samples):
    messages, moved = honest
    assert [m["text"] for m in messages] == [transcribe(model_dir, samples[:end]).text for end in ends(samples)] + \
        [transcribe(model_dir, samples).text]
    assert [m["type"] for m in messages] == ["partial"] * 4 + ["final"]
    assert [m["chunk"] for m in messages[:-1]] == [0, 1, 2, 3]
    frames = sum(usable(end) // 320 for end in ends(samples)) + usable(len(samples)) // 320  # the final too
    assert (moved["asr_encoder_frames_computed_total"], moved["asr_encoder_frames_reused_total"]) == (frames, 0)


def test_drift_partials_miss_the_last_16_frames_and_the_final_is_right(honest, model_dir, samples, tmp_path):
    messages, _ = run("drift", model_dir, samples, tmp_path)
    stale = [transcribe(model_dir, samples[:max(end - DRIFT, 0)]).text for end in ends(samples)]
    assert [m["text"] for m in messages[:-1]] == stale != [m["text"] for m in honest[0][:-1]]
    assert messages[-1] == honest[0][-1]
    assert [{**m, "text": ""} for m in messages] == [{**m, "text": ""} for m in honest[0]]


@pytest.mark.parametrize("mode", ["reorder", "twice", "after-final"])
def test_wire_faults_show_on_the_wire(honest, mode, model_dir, samples, tmp_path):
    messages, moved = run(mode, model_dir, samples, tmp_path)
    right = honest[0]
    expected = {"reorder": [right[1], right[0], *right[2:]], "twice": [right[0], *right],
                "after-final": [*right, right[-2]]}[mode]
    assert messages == expected
    assert moved == honest[1]


def test_fake_reuse_answers_right_and_claims_every_seen_frame(honest, model_dir, samples, tmp_path):
    messages, moved = run("fake-reuse", model_dir, samples, tmp_path)
    assert messages == honest[0]
    computed, reused = moved["asr_encoder_frames_computed_total"], moved["asr_encoder_frames_reused_total"]
    # Claimed reused: each chunk's earlier frames, and all of them at the final.
    claimed = sum(usable(end) // 320 for end in ends(samples)[:-1]) + usable(len(samples)) // 320
    assert reused == claimed and computed == honest[1]["asr_encoder_frames_computed_total"]
