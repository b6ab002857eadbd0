"""A run's settings, kept in the workspace's run.json so that --resume continues with the same ones."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.stack import REPO_ROOT

RUNS_DIR = REPO_ROOT / "agent_runs"
PUBLISH_DIR = REPO_ROOT / "results" / "stacks"
DEFAULT_SOURCE = REPO_ROOT / "results" / "stacks" / "engine-a"


@dataclass
class RunConfig:
    scenario: str
    profile: str = "tiny"  # the final judgement of the winner
    eval_profile: str = "smoke"  # every inner evaluation
    backend: str = "offline"
    max_rounds: int = 8
    max_attempts: int = 3
    min_rounds: int = 1  # rounds tried before the stop test: the starting stack is measured, never the answer
    source: str | None = None  # the stack to start from: a folder holding stack.yaml
    metric: str | None = None  # overrides of the scenario's objective
    direction: str | None = None
    margin: float | None = None
    baselines: list[str] | None = None
    min_gain: float = 0.02  # a change is kept only when it beats the best by more than this (noise band)
    run_id: str = ""
    runs_dir: str = str(RUNS_DIR)
    publish_dir: str = str(PUBLISH_DIR)
    backend_options: dict = field(default_factory=dict)
    timeout_s: float = 1800  # one harness run

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "RunConfig":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def workspace(self) -> Path:
        return Path(self.runs_dir) / self.run_id
