"""kill -9 of the agent at every phase boundary of a round, then --resume: no round lost or done
twice, and the workspace's git history intact.

The fast loop (fast_loop.py) runs in a forked child that SIGKILLs itself just before the Nth
boundary: a phase beginning (the loop's state()), a workspace commit, or a round appended to the
rounds log. The parent resumes the run and compares it with one never killed: the same rounds
with the same outcomes and numbers, the same checkpoints, the same stack at each, and every
commit the killed run made still in the history.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from fast_loop import FakeJudge, fast_loop

from agent import knobs
from agent.loop import AgentLoop
from agent.rounds import RoundsLog
from agent.workspace import Workspace

ROUNDS = 5  # with baseline 1000 never beaten: rounds 1-3 checkpoint, 4 is rejected (bfloat16), 5 rolled back
KEEP = ("round", "task", "outcome", "metric", "passed", "change", "tag")


def loop_in(folder: Path, resume: bool = False) -> AgentLoop:
    if not resume:
        folder.mkdir(parents=True)
    return fast_loop(folder, FakeJudge(), baseline=1000.0, max_rounds=ROUNDS)


def boundaries(monkeypatch, on_cross) -> None:
    def wrap(kind, original):
        def crossing(self, *args, **kwargs):
            on_cross(kind, args)
            return original(self, *args, **kwargs)
        return crossing
    monkeypatch.setattr(AgentLoop, "state", wrap("state", AgentLoop.state))
    monkeypatch.setattr(Workspace, "commit", wrap("commit", Workspace.commit))
    monkeypatch.setattr(RoundsLog, "append", wrap("append", RoundsLog.append))


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, check=True).stdout.strip()


def config_at(ws: Path, ref: str) -> dict:
    data = yaml.safe_load(git(ws, "show", f"{ref}:stack.yaml"))
    return knobs.current(data["command"], knobs.from_spec(data))


def summary(loop: AgentLoop) -> dict:
    ws = loop.ws.root
    return {"rounds": [{k: getattr(r, k) for k in KEEP} for r in loop.rounds.load()],
            "tags": {t: config_at(ws, t) for t in loop.ws.tags()},
            "final": config_at(ws, "HEAD"), "state": loop.ws.read_json("state.json")["phase"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run never killed, and the boundaries it crossed, in order."""
    crossed: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        boundaries(mp, lambda kind, args: crossed.append(
            f"commit {args[0]}" if kind == "commit" else f"state {args[0]} {args[1]}" if kind == "state"
            else f"append round {args[0].round}"))
        loop = loop_in(tmp_path_factory.mktemp("reference") / "run")
        loop.run()
    return summary(loop), crossed


def kill_points() -> list[int]:
    """Every boundary from round 3 on (a checkpoint, a rejected and a rolled-back round, the finish),
    and the first few (set-up, baseline, round 0): 1-based positions in the reference's order."""
    return list(range(1, 8)) + list(range(28, 60))


@pytest.mark.parametrize("kill_at", kill_points())
def test_a_run_killed_at_a_boundary_resumes_to_the_same_rounds(tmp_path, monkeypatch, reference, kill_at):
    expected, crossed = reference
    if kill_at > len(crossed):
        pytest.skip(f"the run crosses {len(crossed)} boundaries")
    folder = tmp_path / "run"
    pid = os.fork()
    if pid == 0:  # the child: run until the boundary, then die as kill -9 would
        try:
            count = [0]

            def on_cross(kind, args):
                count[0] += 1
                if count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            boundaries(monkeypatch, on_cross)
            loop_in(folder).run()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {crossed[kill_at - 1]}"
    ws = folder / "runs" / "fast"
    before = git(ws, "rev-list", "--all").split() if (ws / ".git").is_dir() else []  # none: killed in set-up
    loop = loop_in(folder, resume=True)
    loop.run(resume=True)
    got = summary(loop)
    assert got == expected, f"killed before {crossed[kill_at - 1]}"
    after = set(git(ws, "rev-list", "HEAD").split())
    assert set(before) <= after, "commits of the killed run left the history"
    subprocess.run(["git", "fsck", "--no-progress"], cwd=ws, check=True, capture_output=True)
    assert "resumed:" in (ws / "progress.md").read_text() or not before  # set up again from scratch
