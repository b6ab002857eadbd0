"""End to end, no LLM: the offline policy takes a naive stack to one that passes the oracle and beats
hf-reference on setting A (smoke profile), and publishes it with its rounds table."""
from __future__ import annotations

import pytest

from agent import knobs, stackfiles
from agent_helpers import STANDIN, git, read_json, run_agent

pytestmark = pytest.mark.slow
NAIVE = {"max-batch-size": "1", "dtype": "float32", "threads": "1"}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offline")
    proc = run_agent("--scenario", "standard_serving", "--profile", "smoke", "--backend", "offline",
                     "--from", str(STANDIN), "--max-rounds", "6", "--runs-dir", str(tmp / "runs"),
                     "--publish-dir", str(tmp / "stacks"), "--run-id", "offline-e2e")
    return proc, tmp / "runs" / "offline-e2e", tmp / "stacks" / "standard_serving-agent-offline-e2e"


def test_offline_run_passes_and_beats_hf_reference(offline_run):
    proc, ws, _ = offline_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = read_json(ws / "final.json")
    assert final["passed"] and final["beats_all"], final
    assert final["ratios"]["hf-reference"] > 1.0
    rounds = read_json(ws / "rounds.json")
    assert rounds[0]["change"]["config"] == NAIVE
    assert len(rounds) >= 2 and rounds[-1]["outcome"] == "checkpoint" and rounds[-1]["passed"]
    base = rounds[0]["change"]["config"]
    for r in rounds[1:]:  # one knob changed per round, from the configuration of the last checkpoint
        tried = r["change"]["config"]
        assert [k for k in tried if tried[k] != base[k]] == [r["change"]["knob"]]
        if r["outcome"] == "checkpoint":
            base = tried


def test_offline_run_keeps_its_memory(offline_run):
    proc, ws, _ = offline_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    roadmap = (ws / "roadmap.md").read_text()
    assert "knob-max-batch-size" in roadmap and "Goal:" in roadmap
    progress = (ws / "progress.md").read_text()
    assert "reasoning: Coordinate search" in progress and "hf-reference on smoke" in progress
    usage = [line for line in (ws / "usage.jsonl").read_text().splitlines() if line]
    assert usage and all('"total_tokens": 0' in line for line in usage)
    log = git(ws, "log", "--format=%s")
    for phase in ("setup", "plan:", "implement:", "judge:", "checkpoint:", "record:"):
        assert phase in log
    assert "round-0" in git(ws, "tag")


def test_offline_run_publishes_the_winner(offline_run):
    proc, ws, published = offline_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = stackfiles.load(published)
    assert data["name"] == published.name and (published / "main.py").is_file()
    assert data["command"][1] == str(published / "main.py")  # outside the repo: an absolute path
    assert knobs.current(data["command"], knobs.from_spec(data)) != NAIVE
    table = (published / "ROUNDS.md").read_text()
    assert "| round | task |" in table and "vs hf-reference" in table and "beats every baseline" in table
