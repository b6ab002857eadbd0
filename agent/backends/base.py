"""What a backend is asked and what it answers: plan one task, implement it as a patch."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent import stackfiles
from agent.evaluator import Measurement
from agent.objective import Objective
from agent.patch import Patch
from agent.roadmap import Roadmap
from agent.rounds import RoundRecord
from agent.signals import Signals
from agent.usage import Usage
from agent.workspace import Workspace


class BackendError(RuntimeError):
    """The backend cannot work at all (no CLI, no endpoint): the run stops with this one line."""


@dataclass(frozen=True)
class Task:
    title: str
    pass_criteria: str
    item: str = ""  # the roadmap item it serves
    reasoning: str = ""
    change: dict = field(default_factory=dict)  # the offline policy's {"knob", "from", "to"}
    revert_to_round: int | None = None  # start from that round's checkpoint instead of the latest
    stop: str = ""  # set when the planner has nothing left to try: the reason


@dataclass
class PlanContext:
    round: int
    scenario: str
    profile: str  # the profile the inner evaluations use
    objective: Objective
    roadmap: Roadmap
    signals: Signals
    records: list[RoundRecord]
    current: Measurement  # the latest checkpoint's numbers and profile summary
    baselines: dict[str, float | None]
    workspace: Workspace
    progress_tail: str = ""


@dataclass
class ImplementContext:
    round: int
    attempt: int
    task: Task
    objective: Objective
    workspace: Workspace
    feedback: list[str] = field(default_factory=list)  # the judge's feedback on earlier attempts, oldest first


@dataclass
class Planned:
    task: Task
    roadmap: Roadmap  # the roadmap as the planner leaves it
    usage: Usage


@dataclass
class Implemented:
    patch: Patch | None  # None: no usable patch this attempt (see gave_up)
    usage: Usage
    note: str = ""  # why there is no patch; fed back to the next attempt
    gave_up: bool = False  # the implementer has no repair to offer: the round ends


class Backend(Protocol):
    name: str

    def start(self, ws: Workspace, source: Path | None, stack_name: str) -> str:
        """Put the starting stack into the workspace; returns a note for the log."""

    def plan(self, ctx: PlanContext) -> Planned: ...

    def implement(self, ctx: ImplementContext) -> Implemented: ...


def start_from(ws: Workspace, source: Path | None, stack_name: str) -> str:
    """An LLM backend's start: the source stack copied as it is (the LLM decides what to change)."""
    if source is None:
        return "empty workspace: the first task builds the stack"
    stackfiles.copy(source, ws.root, relative=False, name=stack_name)
    return f"copied {source} as the starting stack"
