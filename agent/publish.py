"""Publishing the winner: its stack under results/stacks/<scenario>-agent-<run-id>/ and ROUNDS.md beside it."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from agent import stackfiles
from agent.objective import Objective
from agent.workspace import Workspace


@dataclass
class Final:
    """The winner's judgement on the profile the user named, next to the baselines on that profile."""

    profile: str
    round: int | None
    passed: bool
    value: float | None = None
    baselines: dict[str, float | None] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    beats_all: bool = False
    summary: str = ""


def publish_stack(ws: Workspace, dst: Path, intro: str, final: Final, objective: Objective, table: str) -> Path:
    """Copy the workspace's stack files to dst (paths in its command relocated) and write ROUNDS.md."""
    if dst.exists():
        shutil.rmtree(dst)
    stackfiles.copy(ws.root, dst, relative=True, name=dst.name, files=ws.stack_files())
    ratios = ", ".join(f"{k}: {v:.2f}x" for k, v in final.ratios.items() if v is not None) or "not measured"
    value = "—" if final.value is None else f"{final.value:.2f}"
    verdict = "beats every baseline" if final.beats_all else "does not beat every baseline"
    lines = [f"# {dst.name}", "", intro, "", f"- {final.summary}",
             f"- {objective.metric} ({objective.direction} is better): {value}; vs baselines: {ratios}; {verdict} "
             f"(margin {objective.margin:g}x)", "", "## Rounds", "", table]
    (dst / "ROUNDS.md").write_text("\n".join(lines))
    return dst
