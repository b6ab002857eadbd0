"""The outer loop in seconds: the offline policy against a fake judge whose 'harness' scores knob
settings (tests/agent/fast_loop.py)."""
from __future__ import annotations

import pytest
from fast_loop import FakeJudge
from fast_loop import fast_loop as _loop

from agent import knobs, stackfiles
from agent.backends.offline import OfflineBackend
from agent.display import Display
from agent.loop import AgentLoop


def test_loop_checkpoints_until_it_beats_the_baseline(tmp_path):
    judge = FakeJudge()
    result = _loop(tmp_path, judge).run()
    rounds = result.table
    assert "the stack passes the judge and beats every baseline" in result.stop_reason
    assert result.final.passed and result.final.beats_all and result.final.ratios["hf-reference"] > 1
    assert result.published and (result.published / "ROUNDS.md").is_file()
    assert "| 0 | starting stack |" in rounds and "checkpoint (round-1)" in rounds


def test_loop_rolls_back_a_change_that_fails_the_judge(tmp_path):
    judge = FakeJudge()
    loop = _loop(tmp_path, judge, baseline=1000.0, max_rounds=6)
    result = loop.run()
    records = loop.rounds.load()
    bf16 = next(r for r in records if r.change.get("to") == "bfloat16")
    assert bf16.outcome == "rejected" and bf16.attempts == 1  # the offline implementer has no repair
    data = stackfiles.load(loop.ws.root)
    assert knobs.current(data["command"], knobs.from_spec(data))["dtype"] == "float32"
    assert "dtype=bfloat16" in (loop.ws.root / "roadmap.md").read_text()
    assert "converged" in result.stop_reason or "budget" in result.stop_reason
    assert not result.final.beats_all


def test_resume_after_an_interrupted_round(tmp_path):
    judge = FakeJudge()
    loop = _loop(tmp_path, judge, baseline=1000.0, max_rounds=1)
    loop.run()
    ws = loop.ws
    # Simulate a kill in the middle of round 2: an uncommitted change and a state file saying so.
    data = stackfiles.load(ws.root)
    data["command"] = knobs.with_value(data["command"], "threads", "2")
    stackfiles.save(ws.root, data)
    ws.write_json("state.json", {"round": 2, "phase": "judge", "attempt": 1})
    before = loop.rounds.load()
    cfg = loop.cfg
    cfg.max_rounds = 2
    again = AgentLoop(cfg, OfflineBackend(), Display(quiet=True), judge=judge)
    again.measure_baseline = loop.measure_baseline
    again.run(resume=True)
    after = again.rounds.load()
    assert [r.round for r in after] == [0, 1, 2] and after[:2] == before
    assert "resumed: round 2 was interrupted in phase judge" in (ws.root / "progress.md").read_text()


def test_unknown_profile_is_an_error_before_anything_runs(tmp_path):
    with pytest.raises(Exception, match="unknown profile"):
        _loop(tmp_path, FakeJudge(), eval_profile="nope")


def test_the_final_judgement_uses_the_profile_the_user_named(tmp_path):
    judge = FakeJudge()
    loop = _loop(tmp_path, judge, profile="tiny", max_rounds=1)
    result = loop.run()
    assert set(judge.profiles[:-1]) == {"smoke"} and judge.profiles[-1] == "tiny"
    baselines = loop.ws.read_json("baselines.json")
    assert baselines["tiny"]["hf-reference"]["value"] == 50.0  # measured in the winner's harness run
    assert result.final.profile == "tiny" and result.final.passed and result.final.ratios["hf-reference"] > 1
    assert "a fresh judgement on tiny" in result.final.summary


@pytest.mark.parametrize("args, says", [
    (["--profile", "nope"], "unknown profile 'nope' for setting A"),
    (["--baseline", "nope"], "--baseline nope: unknown stack"),
    (["--metric", "nope"], "--metric nope: setting A's rows are compared on output_throughput, median_ttft_ms"),
])
def test_a_wrong_argument_is_one_line_before_any_workspace_or_run(tmp_path, capsys, args, says):
    from agent.__main__ import main

    runs = tmp_path / "runs"
    assert main(["run", "--scenario", "standard_serving", "--runs-dir", str(runs), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m agent run: ") and says in err and "\n" not in err, err
    assert not runs.exists() or not any(runs.iterdir())
