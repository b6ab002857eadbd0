"""Planner and implementer as Codex CLI runs (`codex exec`) inside the workspace.

The planner answers in its last message (JSON, as for the openai backend). The implementer edits
the workspace's files itself; what it changed becomes the attempt's patch, checked like any
other, and the integrity check catches anything it wrote outside the workspace.
Configuration: AGENT_CODEX_BIN (default `codex`), --codex-model / AGENT_CODEX_MODEL.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.backends import prompts
from agent.backends.base import BackendError, ImplementContext, Implemented, PlanContext, Planned, start_from
from agent.patch import FileEdit, Patch
from agent.usage import Usage
from agent.workspace import Workspace

EDIT_NOTE = ("Edit the files in the current directory directly (it is the workspace). When done, reply with one "
             "JSON object as your last message: {\"summary\": str} or {\"give_up\": str}.")


@dataclass
class CodexBackend:
    binary: str
    model: str = ""
    timeout_s: float = 3600.0
    name: str = "codex"

    @classmethod
    def from_env(cls, codex_model: str | None = None, **_) -> "CodexBackend":
        binary = os.environ.get("AGENT_CODEX_BIN", "codex")
        found = shutil.which(binary)
        if not found:
            raise BackendError(f"the codex backend needs the Codex CLI, and `{binary}` is not on PATH "
                               f"(npm install -g @openai/codex, or --backend openai|offline)")
        return cls(binary=found, model=codex_model or os.environ.get("AGENT_CODEX_MODEL", ""))

    def start(self, ws: Workspace, source: Path | None, stack_name: str) -> str:
        return start_from(ws, source, stack_name)

    def _exec(self, ws: Workspace, prompt: str, usage: Usage) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            last = Path(tmp) / "last.txt"
            cmd = [self.binary, "exec", "--skip-git-repo-check", "--json", "--sandbox", "workspace-write",
                   "-C", str(ws.root), "-o", str(last)] + (["-m", self.model] if self.model else []) + ["-"]
            started = time.monotonic()
            try:
                proc = subprocess.run(cmd, input=prompt, capture_output=True, text=True, timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise BackendError(f"codex exec ran past {self.timeout_s:.0f} s") from None
            usage.duration_ms = int((time.monotonic() - started) * 1000)
            _read_usage(proc.stdout, usage)
            if proc.returncode != 0:
                raise BackendError(f"codex exec failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-300:]}")
            return last.read_text() if last.is_file() else ""

    def plan(self, ctx: PlanContext) -> Planned:
        usage = Usage(role="planner", backend=self.name, model=self.model, round=ctx.round)
        text = self._exec(ctx.workspace, prompts.PLANNER_SYSTEM + "\nDo not edit any file.\n\n"
                          + prompts.planner_prompt(ctx), usage)
        task, roadmap = prompts.plan_from_reply(text, ctx.roadmap)
        return Planned(task, roadmap, usage)

    def implement(self, ctx: ImplementContext) -> Implemented:
        usage = Usage(role="implementer", backend=self.name, model=self.model, round=ctx.round, attempt=ctx.attempt)
        before = ctx.workspace.head()
        text = self._exec(ctx.workspace, prompts.IMPLEMENTER_SYSTEM.split("Reply with JSON only")[0] + EDIT_NOTE
                          + "\n\n" + prompts.implementer_prompt(ctx), usage)
        try:
            reply = prompts.parse_json(text)
        except ValueError:
            reply = {"summary": text.strip()[:500]}
        if reply.get("give_up"):
            return Implemented(None, usage, str(reply["give_up"]), gave_up=True)
        changed = ctx.workspace.stack_changes(before)
        if not changed:
            return Implemented(None, usage, "codex changed no file")
        edits = tuple(FileEdit(rel, ctx.workspace.read(rel) if ctx.workspace.path(rel).is_file() else None)
                      for rel in changed)
        return Implemented(Patch(edits, str(reply.get("summary", ""))), usage)


def _read_usage(stdout: str, usage: Usage) -> None:
    """Token counts from `codex exec --json` events (turn.completed carries a usage object)."""
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        u = event.get("usage") if isinstance(event, dict) else None
        if isinstance(u, dict):
            usage.prompt_tokens += int(u.get("input_tokens", 0) or 0)
            usage.completion_tokens += int(u.get("output_tokens", 0) or 0)
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
