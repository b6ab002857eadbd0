"""The planner's and implementer's prompts for LLM backends, and how their JSON replies are read."""
from __future__ import annotations

import json
import re

from agent.backends.base import ImplementContext, PlanContext, Task
from agent.roadmap import Item, Roadmap
from agent.rounds import markdown_table

MAX_FILE_CHARS = 30_000
CONTRACT = """A stack is a process serving HTTP on 127.0.0.1:{port}, described by stack.yaml:
  name, command (list; the harness fills {model} {port} {scenario}; `python` is the harness's interpreter;
  the command runs from the project root, so name your files by their absolute path in the workspace),
  health (GET path answering 200 when ready), startup_timeout_s, env, supports ([completions, chat, logprobs]),
  flags (engine settings recorded with every result).
Endpoints (OpenAI-compatible): GET /health; GET /metrics (JSON, at least a `forward_passes` counter of model
forward passes); GET /v1/models; POST /v1/completions and /v1/chat/completions with stream,
stream_options.include_usage, max_tokens, temperature, ignore_eos, logprobs/top_logprobs, prompt as text or
token ids. Greedy outputs must equal the transformers reference (float32) token by token; at a first
divergence both tokens must be in the other's top-5 logprobs. Implement the model yourself or with the
project's skills; never cache or template completion texts: probes with fresh prompts check this."""

PLANNER_SYSTEM = """You are the planner of an agent that builds a bespoke LLM serving stack. You never write code.
Each round you read the roadmap (your memory), the profile of the current stack and the signals, update the
roadmap, and pick ONE task for the implementer with pass criteria on the end-to-end headline metric.
Roadmap statuses: todo, in_progress, done, parked (implementation buggy, direction believable), abandoned
(only with a code- or hardware-level mechanism why it cannot help; "0% gain" is not a mechanism).
On exhaustion propose a strictly smaller task; on a plateau pivot or name the change that breaks it.
Reply with JSON only:
{"reasoning": str, "task": str, "pass_criteria": str, "item": str,
 "roadmap": [{"id": str, "title": str, "kind": "major"|"minor", "status": str, "reason": str}],
 "revert_to_round": int|null, "stop": str|null}"""

IMPLEMENTER_SYSTEM = """You are the implementer of an agent that builds a bespoke LLM serving stack.
You receive one task with pass criteria, the stack's current files, and the judge's feedback on earlier
attempts. Write the stack's files. Paths are relative to the workspace; you may not write outside it, nor
files named harness/, scenarios/, baselines/, conftest.py, nor the agent's records (roadmap.md, progress.md,
rounds.json, usage.jsonl, run.json, state.json). Reply with JSON only:
{"summary": str, "files": [{"path": str, "content": str|null}]}   (null content deletes a file)
or {"give_up": str} when you have no repair to offer."""


def tag(role: str, round_no: int, attempt: int = 0) -> str:
    """A machine-readable first line: which role, round and attempt a prompt is for."""
    return f"[role={role} round={round_no}" + (f" attempt={attempt}]" if attempt else "]")


def planner_prompt(ctx: PlanContext) -> str:
    o = ctx.objective
    bases = ", ".join(f"{k}: {v:.2f}" if v is not None else f"{k}: not measured" for k, v in ctx.baselines.items())
    files = ctx.workspace.stack_files()
    return "\n\n".join([
        tag("planner", ctx.round),
        f"Setting: scenario {ctx.scenario}, evaluated on profile {ctx.profile}. Objective: {o.metric} "
        f"({o.direction} is better) at the {o.load_point} load point; beat every baseline by {o.margin:g}x "
        f"({bases}).",
        "Stack contract:\n" + CONTRACT,
        "Current stack files: " + (", ".join(files) or "(none yet: the first task must create stack.yaml and the "
                                                           "server)"),
        "Profile of the current best stack:\n" + (ctx.current.profile or ctx.current.problem or "(no measurement)"),
        "Signals:\n" + ctx.signals.describe(),
        "Rounds so far:\n" + markdown_table(ctx.records, o),
        "Roadmap (roadmap.md):\n" + ctx.roadmap.render(),
        "Recent progress log:\n" + ctx.progress_tail,
    ])


def implementer_prompt(ctx: ImplementContext) -> str:
    ws = ctx.workspace
    shown = []
    for rel in ws.stack_files():
        text = ws.read(rel) if ws.path(rel).stat().st_size <= MAX_FILE_CHARS else "(too large to show)"
        shown.append(f"--- {rel}\n{text}")
    feedback = "\n\n".join(f"Attempt {n + 1} was rejected:\n{f}" for n, f in enumerate(ctx.feedback)) or "none"
    return "\n\n".join([
        tag("implementer", ctx.round, ctx.attempt),
        f"Workspace (absolute path, for stack.yaml's command): {ws.root}",
        f"Task: {ctx.task.title}\nPass criteria: {ctx.task.pass_criteria}",
        "Stack contract:\n" + CONTRACT,
        "Judge feedback on earlier attempts:\n" + feedback,
        "Current files:\n" + ("\n\n".join(shown) or "(none)"),
    ])


def parse_json(text: str) -> dict:
    """The first JSON object in a reply, fenced or not."""
    text = text.strip()
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.S)
    if fenced:
        text = fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("the reply holds no JSON object")
    data = json.loads(text[start:end + 1])
    if not isinstance(data, dict):
        raise ValueError("the reply is not a JSON object")
    return data


def read_plan(data: dict, old: Roadmap) -> tuple[Task, Roadmap]:
    stop = data.get("stop") or ""
    if not stop and not str(data.get("task") or "").strip():
        raise ValueError("the plan has no task")
    revert = data.get("revert_to_round")
    task = Task(title=str(data.get("task") or "stop"), pass_criteria=str(data.get("pass_criteria") or ""),
                item=str(data.get("item") or ""), reasoning=str(data.get("reasoning") or ""),
                revert_to_round=int(revert) if isinstance(revert, (int, float)) else None, stop=str(stop))
    roadmap = Roadmap(old.goal, list(old.items))
    for entry in data.get("roadmap") or []:
        try:
            before = old.get(str(entry["id"]))
            roadmap.upsert(Item(str(entry["id"]), str(entry.get("title", entry["id"])), str(entry.get("kind", "minor")),
                                str(entry.get("status", "todo")), before.rounds if before else (),
                                str(entry.get("reason", ""))))
        except (KeyError, ValueError, TypeError):
            continue
    return task, roadmap


def plan_from_reply(text: str, roadmap: Roadmap) -> tuple[Task, Roadmap]:
    """The planner's task and roadmap from its reply; an unreadable reply becomes the study's
    fallback task, "make the stack pass the judge and improve the headline metric"."""
    try:
        return read_plan(parse_json(text), roadmap)
    except (ValueError, TypeError) as exc:
        return Task(title="Make the stack pass the judge and improve the headline metric",
                    pass_criteria="the judge passes; the metric improves",
                    reasoning=f"(the planner's reply could not be read: {exc})"), roadmap
