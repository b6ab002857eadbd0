"""Scoring test doubles as a user scores a stack: each double's spec (one fault put in on purpose,
chosen by its command's last argument) written out, and the setting's test module run once over all
of them on the smoke profile, so the references are drawn once."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from harness.row import ResultRow, read_rows

REPO = Path(__file__).resolve().parent.parent


def double(base: str, name: str, mode: str, **changes) -> dict:
    """tests/stacks/`base` (a spec whose command ends in its mode), named `name`, run in `mode`."""
    spec = yaml.safe_load((REPO / "tests" / "stacks" / base).read_text())
    return {**spec, "name": name, "command": [*spec["command"][:-1], mode], **changes}


Rows = dict[str, dict[str, ResultRow]]


def score(tmp: Path, module: str, specs: list[dict], timeout: int) -> tuple[subprocess.CompletedProcess, Rows]:
    """pytest's output, and the rows by stack and then kind (accuracy, performance)."""
    stacks = []
    for spec in specs:
        path = tmp / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        stacks += ["--stack", str(path)]
    out = subprocess.run([sys.executable, "-m", "pytest", module, "-p", "no:cacheprovider", "-q", "--profile", "smoke",
                          "--results-dir", str(tmp), "--no-leaderboard", *stacks],
                         cwd=REPO, capture_output=True, text=True, timeout=timeout)
    rows: Rows = {}
    for row in read_rows(tmp):
        rows.setdefault(row.stack, {})[row.kind] = row
    return out, rows


def marked_delay_stack(folder: Path, ttft: str) -> tuple[Path, str]:
    """A delay-server spec whose command carries `ttft` (make it unique to the test: its pid), and the
    text that finds its process in /proc, so a test can tell whether that stack outlived a command."""
    spec = folder / "marked.yaml"
    spec.write_text(yaml.safe_dump({"name": "marked", "startup_timeout_s": 30, "supports": ["completions"],
                                    "command": ["python", "tests/stacks/delay_server.py", "--ttft-ms", ttft,
                                                "--port", "{port}"]}))
    return spec, f"delay_server.py --ttft-ms {ttft} "
