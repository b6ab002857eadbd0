"""A result row: one (stack, setting, profile, load point, repeat), the unit the leaderboard reads."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.atomic import atomic_write_json

SCHEMA_VERSION = 2
SALTED_SCHEMA = 2  # rows from here on record the run's salt (None: prompts sent unsalted)

# Where rows live: results/runs/<run_id>/<setting>-<profile>/<stack>/<name>.json,
# with the raw per-request records beside each row as <name>.records.jsonl.
RUNS_DIR = "runs"


@dataclass
class ResultRow:
    run_id: str
    stack: str
    setting: str  # "A".."G"
    scenario: str  # the scenario's name (its YAML's `name`)
    profile: str  # "tiny" | "paper" | ...
    kind: str  # "performance" | "accuracy" | "startup" (a stack that did not start)
    status: str  # "ok" | "failed" | "crashed" | "partial" | "not_applicable"
    load_point: dict | None = None  # {"label": "rate=0.5", "request_rate": 0.5, ...}
    repeat: int = 0
    metrics: dict = field(default_factory=dict)  # vLLM-style keys: output_throughput, p99_ttft_ms, ...
    accuracy: dict | None = None  # {"verdict": "pass"|"fail", "summary": str, ...}
    error: str | None = None
    stack_info: dict = field(default_factory=dict)  # spec name/path or url, command, supports, flags
    machine: dict = field(default_factory=dict)  # cpu, cores, load average before/after, gpu
    commit: dict = field(default_factory=dict)  # {"sha": ..., "dirty": bool}
    versions: dict = field(default_factory=dict)  # python, torch, transformers, harness, ...
    started_at: str = ""  # ISO 8601, UTC
    finished_at: str = ""
    records_file: str | None = None  # file name beside the row
    counters: dict | None = None  # the stack's /metrics counters that moved during the cell (after - before)
    engagement: dict | None = None  # the engagement guard's verdict and evidence, where one applied
    outputs: dict | None = None  # the measured outputs judged against the reference (which, the verdict)
    salt: str | None = None  # the workload salt every prompt of the run carried
    schema_version: int = SCHEMA_VERSION

    @property
    def name(self) -> str:
        if self.kind != "performance":
            return self.kind
        label = (self.load_point or {}).get("label", "load")
        return f"perf-{label}-r{self.repeat}".replace("/", "_").replace(" ", "")

    def path_in(self, results_dir: Path) -> Path:
        return Path(results_dir) / RUNS_DIR / self.run_id / f"{self.setting}-{self.profile}" / self.stack / f"{self.name}.json"

    def write(self, results_dir: Path) -> Path:
        path = self.path_in(results_dir)
        atomic_write_json(path, asdict(self))
        return path

    @classmethod
    def from_json(cls, data: dict) -> "ResultRow":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def read_rows(results_dir: Path, warn: Callable[[str], None] | None = None) -> list[ResultRow]:
    """Every row under results_dir, skipping records files and half-written temporaries; a file
    that is not a row (truncated, edited by hand) is skipped with a warning through `warn`."""
    rows = []
    for path in sorted((Path(results_dir) / RUNS_DIR).glob("*/*/*/*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text())
            rows.append(ResultRow.from_json(data))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            (warn or _stderr)(f"warning: skipped {path}: not a readable row ({type(exc).__name__}: {exc})")
    return rows
