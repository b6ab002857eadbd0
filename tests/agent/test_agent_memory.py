"""The agent's memory files: roadmap round trip, append-only progress, rounds and usage logs."""
from __future__ import annotations

from agent.progress import ProgressLog
from agent.roadmap import Item, Roadmap, parse
from agent.rounds import CHECKPOINT, RoundRecord, RoundsLog, last_checkpoint
from agent.usage import Usage, UsageLog


def test_roadmap_round_trips_through_markdown():
    rm = Roadmap("Goal: beat hf-reference.", [Item("knob-dtype", "search --dtype | bf16", "minor", "todo")])
    rm.set_status("knob-dtype", "abandoned", "bf16 changes greedy tokens \\ lossy", 3)
    rm.upsert(Item("batching", "continuous batching", "major", "in_progress", (1, 2), "started"))
    back = parse(rm.render())
    assert back.goal == "Goal: beat hf-reference."
    assert back.items == rm.items
    assert [i.id for i in back.with_status("abandoned")] == ["knob-dtype"]


def test_progress_is_append_only(tmp_path):
    log = ProgressLog(tmp_path / "progress.md")
    log.add(1, "planner", "task: a\nreasoning: b")
    log.add(1, "judge a1", "PASS")
    text = log.text()
    assert text.index("planner") < text.index("judge a1") and "  reasoning: b" in text


def test_rounds_and_usage_logs(tmp_path):
    rounds = RoundsLog(tmp_path / "rounds.json")
    rounds.append(RoundRecord(round=0, task="start", outcome=CHECKPOINT, tag="round-0"))
    rounds.append(RoundRecord(round=1, task="x", outcome="rejected"))
    rounds.append(RoundRecord(round=1, task="x again", outcome="rejected"))  # a redone round replaces its record
    loaded = rounds.load()
    assert [r.task for r in loaded] == ["start", "x again"] and last_checkpoint(loaded).tag == "round-0"
    usage = UsageLog(tmp_path / "usage.jsonl")
    usage.add(Usage(role="planner", backend="openai", prompt_tokens=10, completion_tokens=5, total_tokens=15,
                    cost_usd=0.001))
    usage.add(Usage(role="implementer", backend="offline"))
    assert usage.totals() == {"calls": 2, "total_tokens": 15, "cost_usd": 0.001}
