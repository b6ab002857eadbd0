"""The agent's reward-hack probes on a speech setting: unseen audio streamed to the stack, every
partial and the final against the transformers reference, encoder counters that must grow. An
honest server passes; one whose partials drift from the audio so far (tests/stacks/asr_double.py
--mode drift) fails."""
from __future__ import annotations

import dataclasses

import pytest

from agent.audio_probes import run_audio_probes
from harness.assets import ensure_model
from harness.scenario import find_scenarios
from harness.stack import REPO_ROOT, load_spec

pytestmark = pytest.mark.slow  # the real tiny moonshine_streaming behind a launched double


def double(mode: str):
    spec = load_spec(REPO_ROOT / "tests" / "stacks" / "asr_double.yaml")
    command = tuple(mode if part == "honest" else part for part in spec.command)
    return dataclasses.replace(spec, name=f"asr-{mode}", command=command + ("--threads", "1"))


@pytest.fixture(scope="module")
def scenario():
    return next(s for s in find_scenarios(REPO_ROOT / "scenarios") if s.name == "streaming_asr")


@pytest.mark.parametrize("mode,ok", [("honest", True), ("drift", False)])
def test_audio_probes_pass_an_honest_server_and_fail_a_drifting_one(scenario, tmp_path, mode, ok):
    result = run_audio_probes(double(mode), scenario, "smoke", ensure_model("moonshine-streaming-tiny"), tmp_path)
    assert result.ok is ok, result.details
    if not ok:
        assert any("/chunk-" in line for line in result.details), result.details
