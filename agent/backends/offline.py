"""The offline policy: no LLM. It starts from a deliberately naive configuration of a composed stack
and searches its knobs, one change per round, with the harness as the judge (coordinate search).

Planner: reads the knob space from the stack (stack.yaml `knobs:`, else main.py --help), the
rounds so far and the signals, and picks the next untried one-knob change from the best
configuration; it writes its reasons into the roadmap as an LLM planner would.
Implementer: rewrites the flag in stack.yaml. It has no repairs: when a change fails the judge
it gives up at once (retrying the same deterministic change would fail the same way), except
after a timeout, which on a loaded machine may pass on a second try.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from agent import knobs as knob_space
from agent import stackfiles
from agent.backends.base import ImplementContext, Implemented, PlanContext, Planned, Task
from agent.patch import FileEdit, Patch
from agent.roadmap import Item, Roadmap
from agent.rounds import CHECKPOINT, REJECTED, ROLLED_BACK, RoundRecord
from agent.usage import Usage
from agent.workspace import Workspace

POLICY = ("Policy (offline): coordinate search over the stack's knobs, one change per round from the best "
          "configuration; a change is kept only when the harness measures it better.")
# Knob names that attack each bottleneck the profile summary can name.
QUEUEING_HINTS = ("batch", "concurren", "seqs", "parallel")
STEP_HINTS = ("dtype", "thread", "overhead", "chunk", "compile", "quant")


def config_key(config: dict) -> tuple:
    return tuple(sorted((str(k), str(v)) for k, v in config.items()))


@dataclass(frozen=True)
class Candidate:
    knob: str
    old: str
    new: str


class OfflineBackend:
    name = "offline"

    # ------------------------------------------------------------------ start

    def start(self, ws: Workspace, source: Path | None, stack_name: str) -> str:
        """Copy the composed stack and set every knob to its naive value."""
        if source is None:
            raise ValueError("the offline policy needs a stack to start from (--from)")
        data = stackfiles.copy(source, ws.root, relative=False, name=stack_name)
        space = knob_space.read(data, ws.root)
        for k in space:
            data["command"] = knob_space.with_value(data["command"], k.name, k.naive)
        data["flags"] = {**(data.get("flags") or {}), **{_flag(k.name): _typed(k.naive) for k in space}}
        # The space found (perhaps from --help) is written down, so every later round reads the same one.
        data["knobs"] = {k.name: {"values": list(k.values), "naive": k.naive} for k in space}
        stackfiles.save(ws.root, data)
        naive = ", ".join(f"--{k.name} {k.naive}" for k in space) or "no knobs"
        return f"copied {source} and set the naive configuration: {naive}"

    # ------------------------------------------------------------------ planner

    def plan(self, ctx: PlanContext) -> Planned:
        data = stackfiles.load(ctx.workspace.root)
        space = knob_space.read(data, ctx.workspace.root)
        config = knob_space.current(data["command"], space)
        roadmap = self._review(ctx, space, config)
        candidate = self._next(ctx, space, config)
        usage = Usage(role="planner", backend=self.name, round=ctx.round)
        if candidate is None:
            for k in space:
                item = roadmap.get(f"knob-{k.name}")
                if item and item.status in ("todo", "in_progress"):
                    roadmap.set_status(item.id, "done", f"converged at {config[k.name]}")
            why = ("the stack declares no knobs to search" if not space else
                   "coordinate search converged: every one-knob change from the best configuration "
                   f"({_show(config)}) has been tried")
            return Planned(Task(title="stop", pass_criteria="", stop=why), roadmap, usage)
        item_id = f"knob-{candidate.knob}"
        best = _best(ctx)
        task = Task(
            title=f"set --{candidate.knob} {candidate.old} -> {candidate.new}",
            pass_criteria=(f"the judge passes (integrity, probes, held-out oracle) and {ctx.objective.metric} beats "
                           f"{'the first measurement' if best is None else f'{best:.2f}'} "
                           f"({ctx.objective.direction} is better) by more than the noise band"),
            item=item_id,
            reasoning=self._reasoning(ctx, candidate),
            change={"knob": candidate.knob, "from": candidate.old, "to": candidate.new,
                    "config": {**config, candidate.knob: candidate.new}},
        )
        roadmap.set_status(item_id, "in_progress", f"trying {candidate.old} -> {candidate.new}", ctx.round)
        return Planned(task, roadmap, usage)

    def _next(self, ctx: PlanContext, space: list, config: dict) -> Candidate | None:
        tried = _tried(ctx.records)
        failed = {config_key(r.change["config"]) for r in ctx.records if r.change.get("config") and not r.kept}
        for k in self._order(ctx, space):
            current = config[k.name]
            i = k.index(current)
            for step in (1, -1):
                j = i + step
                while 0 <= j < len(k.values):
                    key = config_key({**config, k.name: k.values[j]})
                    if key in failed:
                        break  # a value that was worse or failed blocks the values beyond it (unimodal search)
                    if key not in tried:
                        return Candidate(k.name, current, k.values[j])
                    j += step
        return None

    def _order(self, ctx: PlanContext, space: list) -> list:
        """The knob the last kept change moved first (keep pushing), then the others in priority order,
        starting after the last knob tried; a plateau skips the last knob (pivot)."""
        ranked = sorted(space, key=lambda k: (not _hinted(k.name, ctx.current.profile), space.index(k)))
        last = next((r for r in reversed(ctx.records) if r.change.get("knob")), None)
        if last is None:
            return ranked
        names = [k.name for k in ranked]
        if last.change["knob"] not in names:
            return ranked
        i = names.index(last.change["knob"])
        rotated = ranked[i + 1:] + ranked[:i + 1]
        if last.kept and not ctx.signals.plateau:
            return [ranked[i]] + rotated[:-1]
        if ctx.signals.plateau:
            return rotated[:-1] + [ranked[i]]
        return rotated

    def _review(self, ctx: PlanContext, space: list, config: dict) -> Roadmap:
        """Bring the roadmap up to date with the last round's outcome, as a planner reading it would."""
        roadmap = Roadmap(ctx.roadmap.goal, list(ctx.roadmap.items))
        if POLICY not in roadmap.goal:
            roadmap.goal = f"{roadmap.goal}\n\n{POLICY}".strip()
        for k in space:
            if roadmap.get(f"knob-{k.name}") is None:
                roadmap.upsert(Item(f"knob-{k.name}", f"search --{k.name} over {list(k.values)} "
                                    f"(naive {k.naive})", "minor", "todo"))
        last = ctx.records[-1] if ctx.records else None
        if last is None or not last.change.get("knob"):
            return roadmap
        knob, new = last.change["knob"], last.change["to"]
        item_id = f"knob-{knob}"
        if roadmap.get(item_id) is None:
            return roadmap
        if last.outcome == CHECKPOINT:
            roadmap.set_status(item_id, "in_progress", f"kept {new} ({_pct(last.gain)}); next: its neighbours",
                               last.round)
        elif last.outcome == ROLLED_BACK:
            roadmap.set_status(item_id, "in_progress", f"{new} measured {_pct(last.gain)}: not better, "
                               f"kept {config.get(knob)}", last.round)
        elif last.outcome == REJECTED:
            status, why = _failure_status(last)
            roadmap.upsert(Item(f"{knob}={new}", f"--{knob} {new}", "minor", status, (last.round,), why))
        return roadmap

    def _reasoning(self, ctx: PlanContext, c: Candidate) -> str:
        parts = [f"Coordinate search: one change per round from the best configuration; next is --{c.knob} "
                 f"{c.old} -> {c.new}."]
        if _hinted(c.knob, ctx.current.profile):
            parts.append("The profile points at this knob: " + _hint_line(ctx.current.profile))
        if ctx.signals.notes:
            parts.append("Signals: " + " ".join(ctx.signals.notes))
        return " ".join(parts)

    # ------------------------------------------------------------------ implementer

    def implement(self, ctx: ImplementContext) -> Implemented:
        usage = Usage(role="implementer", backend=self.name, round=ctx.round, attempt=ctx.attempt)
        change = ctx.task.change
        if not change.get("knob"):
            return Implemented(None, usage, "the offline implementer only changes knobs", gave_up=True)
        if ctx.attempt > 1 and not any("timed out" in f for f in ctx.feedback[-1:]):
            return Implemented(None, usage, "no repair: the change itself fails the judge, and retrying a "
                                            "deterministic change gives the same result", gave_up=True)
        data = stackfiles.load(ctx.workspace.root)
        data["command"] = knob_space.with_value(data["command"], change["knob"], change["to"])
        data["flags"] = {**(data.get("flags") or {}), _flag(change["knob"]): _typed(change["to"])}
        text = yaml.safe_dump(data, sort_keys=False, width=120, default_flow_style=None)
        patch = Patch((FileEdit(stackfiles.SPEC, text),), f"--{change['knob']} {change['from']} -> {change['to']}",
                      {"change": change})
        return Implemented(patch, usage)


def _flag(knob: str) -> str:
    """The `flags` key a knob is recorded under in rows (engine specs spell them with underscores)."""
    return knob.replace("-", "_")


def _typed(value: str):
    return int(value) if value.lstrip("-").isdigit() else value


def _tried(records: list[RoundRecord]) -> set[tuple]:
    return {config_key(r.change["config"]) for r in records if r.change.get("config")}


def _best(ctx: PlanContext) -> float | None:
    return ctx.current.value


def _hinted(name: str, profile: str) -> bool:
    hints = QUEUEING_HINTS if "queue" in profile else STEP_HINTS if "per-step" in profile else ()
    return any(h in name for h in hints)


def _hint_line(profile: str) -> str:
    return next((line for line in profile.splitlines() if "queue" in line or "per-step" in line), "")


def _failure_status(record: RoundRecord) -> tuple[str, str]:
    """Abandoned needs a mechanism; a failure to start or a timeout is a bug, so parked."""
    judge = record.judge
    if "oracle" in judge or "probes fail" in judge:
        return "abandoned", (f"{judge}: this setting changes the numerics of the model, and the oracle accepts only "
                             f"greedy tokens equal to the float32 reference (near-ties aside)")
    return "parked", f"{judge}: the stack failed with this setting; the direction is believable, the cause needs debugging"


def _pct(gain: float | None) -> str:
    return "no measurement" if gain is None else f"{gain * 100:+.1f}%"


def _show(config: dict) -> str:
    return ", ".join(f"--{k} {v}" for k, v in config.items())
