"""LLM backends without an LLM: reply parsing, the codex CLI's absence and a fake codex, leftover processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from agent import processes
from agent.backends import make_backend
from agent.backends.base import BackendError, ImplementContext, Task
from agent.backends.prompts import parse_json, read_plan
from agent.objective import Objective
from agent.roadmap import Item, Roadmap
from agent.workspace import Workspace

OBJ = Objective("output_throughput", "higher", "last", 1.0, ())


def test_replies_are_read_fenced_or_not():
    assert parse_json('Sure!\n```json\n{"task": "x"}\n```') == {"task": "x"}
    assert parse_json('{"a": {"b": 1}} trailing') == {"a": {"b": 1}}
    with pytest.raises(ValueError):
        parse_json("no json here")


def test_a_plan_updates_the_roadmap_and_keeps_item_history():
    old = Roadmap("g", [Item("batching", "continuous batching", "major", "in_progress", (1,))])
    task, rm = read_plan({"task": "add a KV pool", "pass_criteria": "tok/s up", "item": "batching",
                          "roadmap": [{"id": "batching", "title": "continuous batching", "status": "parked",
                                       "reason": "deadlock under load"},
                                      {"id": "bad", "status": "nonsense"}], "revert_to_round": 2}, old)
    assert task.revert_to_round == 2 and rm.get("batching").status == "parked" and rm.get("batching").rounds == (1,)
    assert rm.get("bad") is None


def test_codex_missing_is_one_line(monkeypatch):
    monkeypatch.setenv("AGENT_CODEX_BIN", "codex-not-installed-here")
    with pytest.raises(BackendError) as err:
        make_backend("codex")
    assert "\n" not in str(err.value) and "not on PATH" in str(err.value)


def test_fake_codex_edits_become_a_patch(tmp_path, monkeypatch):
    fake = tmp_path / "codex"
    fake.write_text("#!/bin/sh\n"
                    "# a stand-in for `codex exec`: edits main.py in -C DIR and writes the last message to -o FILE\n"
                    "while [ $# -gt 0 ]; do case $1 in -C) dir=$2; shift;; -o) out=$2; shift;; esac; shift; done\n"
                    "cat > /dev/null\n"
                    "echo 'print(2)' > $dir/main.py\n"
                    "echo '{\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":7,\"output_tokens\":3}}'\n"
                    "echo '{\"summary\": \"print 2\"}' > $out\n")
    fake.chmod(0o755)
    monkeypatch.setenv("AGENT_CODEX_BIN", str(fake))
    ws = Workspace.create(tmp_path / "run")
    ws.write("main.py", "print(1)\n")
    ws.commit("setup")
    impl = make_backend("codex").implement(ImplementContext(1, 1, Task("t", "p"), OBJ, ws))
    assert [e.path for e in impl.patch.files] == ["main.py"] and impl.patch.summary == "print 2"
    assert impl.usage.total_tokens == 10


def test_openai_backend_needs_a_model(monkeypatch):
    monkeypatch.delenv("AGENT_OPENAI_MODEL", raising=False)
    with pytest.raises(BackendError):
        make_backend("openai")


def test_leftover_processes_of_a_workspace_are_found_and_ended(tmp_path):
    ws = tmp_path / "run"
    ws.mkdir()
    script = ws / "main.py"
    script.write_text("import time\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, str(script)])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        while child.pid not in processes.leftovers(ws) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes.leftovers(ws) == [child.pid]
        assert processes.reap(ws) == [child.pid]
        assert child.wait(timeout=10) == -9 and other.poll() is None
    finally:
        for p in (child, other):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_the_lock_refuses_a_second_live_agent(tmp_path):
    processes.acquire(tmp_path)
    (tmp_path / processes.LOCK).write_text(str(os.getppid()))
    with pytest.raises(RuntimeError):
        processes.acquire(tmp_path)
    (tmp_path / processes.LOCK).write_text("999999999")  # a dead holder (killed -9): taken over
    processes.acquire(tmp_path)


def test_openai_backend_against_the_llm_test_double(tmp_path, monkeypatch):
    from agent.evaluator import Measurement
    from agent.backends.base import PlanContext
    from agent.signals import Signals
    from agent_helpers import llm_double

    script = {"planner:1": {"task": "add batching", "pass_criteria": "tok/s up", "item": "batching",
                            "roadmap": [{"id": "batching", "title": "continuous batching", "kind": "major",
                                         "status": "in_progress", "reason": "queueing"}]},
              "implementer:1:1": "```json\n{\"summary\": \"s\", \"files\": [{\"path\": \"main.py\", \"content\": \"x\"}]}\n```",
              "implementer:1:2": "I think you should just try harder."}
    ws = Workspace.create(tmp_path / "run")
    with llm_double(script, tmp_path) as (base_url, log):
        monkeypatch.setenv("AGENT_OPENAI_BASE_URL", base_url)
        monkeypatch.setenv("AGENT_OPENAI_MODEL", "scripted")
        backend = make_backend("openai")
        ctx = PlanContext(round=1, scenario="standard_serving", profile="smoke", objective=OBJ, roadmap=Roadmap(),
                          signals=Signals(), records=[], current=Measurement(None, problem="none yet"), baselines={},
                          workspace=ws)
        planned = backend.plan(ctx)
        assert planned.task.title == "add batching" and planned.roadmap.get("batching").kind == "major"
        assert planned.usage.total_tokens > 0 and planned.usage.model == "scripted"
        impl = backend.implement(ImplementContext(1, 1, planned.task, OBJ, ws))
        assert impl.patch.files[0].path == "main.py"
        bad = backend.implement(ImplementContext(1, 2, planned.task, OBJ, ws))
        assert bad.patch is None and not bad.gave_up and "not a valid patch" in bad.note
        with pytest.raises(BackendError):
            backend.implement(ImplementContext(2, 1, planned.task, OBJ, ws))  # nothing scripted: HTTP 400
    assert '"answered": "planner:1"' in log.read_text()
