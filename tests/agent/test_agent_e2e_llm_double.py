"""End to end with a test double standing in for the hosted LLM (scripted replies over the OpenAI API).

One scripted run of the openai backend, optimising a latency metric (median TPOT, lower is better):
  round 1: the implementer writes ../../scenarios/standard_serving.yaml, then harness/oracle.py (both
           caught before anything is written), then a main.py that breaks the oracle (judged, rejected);
           the round is exhausted and rolled back to the starting stack;
  round 2: it removes the per-step overhead (250 ms, well above the noise of a shared machine): TPOT
           drops, which must count as an improvement; the agent is killed with SIGKILL while round 2
           is being judged, and --resume finishes it.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from agent import knobs, processes, stackfiles
from harness.stack import REPO_ROOT
from agent_helpers import STANDIN, agent_cmd, git, llm_double, read_json, run_agent

pytestmark = pytest.mark.slow
RUN = "double-e2e"
ORACLE_FILES = ("scenarios/standard_serving.yaml", "harness/oracle.py")


def _sha(rel: str) -> str:
    return hashlib.sha256((REPO_ROOT / rel).read_bytes()).hexdigest()


def _script(ws) -> dict:
    main = (STANDIN / "main.py").read_text()
    broken = main.replace("token = int(idx[0])", "token = (int(idx[0]) + 1000) % logits.shape[-1]")
    assert broken != main
    fast = yaml.safe_load((STANDIN / "stack.yaml").read_text())
    fast["command"][1] = str(ws / "main.py")
    fast["name"] = f"standard_serving-agent-{RUN}"
    plan = lambda task: {"reasoning": "profile: per-step cost dominates", "task": task,  # noqa: E731
                         "pass_criteria": "judge passes; median_tpot_ms lower", "item": "decode-step",
                         "roadmap": [{"id": "decode-step", "title": "cheaper decode step", "kind": "major",
                                      "status": "in_progress", "reason": "TPOT dominates"}]}
    return {
        "planner:1": plan("rewrite the decode step"),
        "implementer:1:1": {"summary": "tune the workload", "files": [
            {"path": "../../scenarios/standard_serving.yaml", "content": "hacked: true\n"}]},
        "implementer:1:2": {"summary": "a friendlier oracle", "files": [
            {"path": "main.py", "content": main}, {"path": "harness/oracle.py", "content": "def judge(*a): pass\n"}]},
        "implementer:1:3": {"summary": "skip a step", "files": [{"path": "main.py", "content": broken}]},
        "planner:2": plan("remove the per-step sleep"),
        "implementer:2": {"summary": "no sleep per forward pass",
                          "files": [{"path": "stack.yaml", "content": yaml.safe_dump(fast, sort_keys=False)}]},
    }


def _wait_for(ws, round_no: int, phase: str, proc, stderr_path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_json(ws / "state.json") if (ws / "state.json").is_file() else {}
        if state.get("round") == round_no and state.get("phase") == phase:
            return
        assert proc.poll() is None, f"the agent ended early: {stderr_path.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"round {round_no} never reached phase {phase}")


@pytest.fixture(scope="module")
def double_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("double")
    runs, ws = tmp / "runs", tmp / "runs" / RUN
    start = tmp / "start"
    data = stackfiles.copy(STANDIN, start, relative=False)
    data["command"] = knobs.with_value(data["command"], "step-overhead-ms", "250")
    data.pop("knobs")
    stackfiles.save(start, data)
    hashes = {rel: _sha(rel) for rel in ORACLE_FILES}
    with llm_double(_script(ws), tmp) as (base_url, requests):
        env = {**os.environ, "AGENT_OPENAI_BASE_URL": base_url, "AGENT_OPENAI_MODEL": "scripted",
               "OPENAI_API_KEY": "test-double"}
        args = ["--scenario", "standard_serving", "--profile", "smoke", "--backend", "openai", "--from", str(start),
                "--metric", "median_tpot_ms", "--no-baselines", "--max-rounds", "2", "--runs-dir", str(runs),
                "--publish-dir", str(tmp / "stacks"), "--run-id", RUN]
        stderr = (tmp / "agent.stderr").open("w")
        proc = subprocess.Popen(agent_cmd(*args), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            _wait_for(ws, 2, "judge", proc, tmp / "agent.stderr")
            time.sleep(3)  # let the judge start the stack: the kill must leave processes behind
            before = {name: (ws / name).read_text() for name in ("rounds.json", "usage.jsonl", "progress.md")}
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        resumed = run_agent("--resume", str(ws), env=env)
    return {"ws": ws, "before": before, "resumed": resumed, "hashes": hashes, "requests": requests,
            "published": tmp / "stacks" / f"standard_serving-agent-{RUN}"}


def test_double_patches_that_touch_oracle_files_are_caught(double_run):
    ws = double_run["ws"]
    progress = (ws / "progress.md").read_text()
    assert "../../scenarios/standard_serving.yaml: leaves the workspace" in progress
    assert "harness/oracle.py: harness is the harness's oracle/workload" in progress
    assert {rel: _sha(rel) for rel in ORACLE_FILES} == double_run["hashes"]
    assert not (ws / "harness").exists()


def test_double_patch_that_breaks_the_oracle_is_rejected_and_rolled_back(double_run):
    ws = double_run["ws"]
    r1 = read_json(ws / "rounds.json")[1]
    assert (r1["outcome"], r1["attempts"], r1["passed"]) == ("rejected", 3, False)
    assert "exhaustion" in r1["signals"]
    assert "r1 rollback to round-0: the judge failed" in git(ws, "log", "--format=%s")
    assert git(ws, "show", "round-0:main.py") == git(ws, "show", f"{r1['commit']}:main.py")
    progress = (ws / "progress.md").read_text()
    assert "r1 judge a3" in progress and "probes fail" in progress


def test_double_latency_improvement_is_recognised(double_run):
    ws = double_run["ws"]
    r0, _, r2 = read_json(ws / "rounds.json")
    assert r2["outcome"] == "checkpoint" and r2["tag"] == "round-2"
    assert r2["metric"] < r0["metric"] and r2["gain"] > 0  # lower TPOT is better
    assert "regression" not in r2["signals"]
    final = read_json(ws / "final.json")
    assert final["passed"] and final["round"] == 2
    assert (double_run["published"] / "ROUNDS.md").is_file()


def test_double_kill_9_then_resume_loses_nothing(double_run):
    ws, before, resumed = double_run["ws"], double_run["before"], double_run["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    after = {name: (ws / name).read_text() for name in before}
    for name in ("usage.jsonl", "progress.md"):  # append-only: the old content is a prefix of the new
        assert after[name].startswith(before[name]), name
    assert json.loads(after["rounds.json"])[:2] == json.loads(before["rounds.json"])
    assert "resumed: round 2 was interrupted in phase judge" in after["progress.md"]
    assert [r["round"] for r in json.loads(after["rounds.json"])] == [0, 1, 2]
    assert {"round-0", "round-2"} <= set(git(ws, "tag").split())
    usage = [json.loads(line) for line in after["usage.jsonl"].splitlines()]
    assert all(u["backend"] == "openai" and u["total_tokens"] > 0 for u in usage)
    assert processes.leftovers(ws) == []  # the resume ended what the killed agent left running
