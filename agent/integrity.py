"""The oracle and workload must not move: hashes of harness/, scenarios/, conftest.py and baselines/.

They are hashed when a run starts and re-hashed around every judgement. A change means an
attempt (or something it ran) wrote to the instrument, and the judgement cannot be trusted.
"""
from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PROTECTED = ("harness", "scenarios", "baselines", "conftest.py")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache"}


@dataclass(frozen=True)
class Snapshot:
    root: str
    hashes: dict[str, str]  # path relative to root -> sha256 of its bytes
    commit: str = ""
    uncommitted: list[str] = field(default_factory=list)  # protected paths that differed from the commit at start

    def to_json(self) -> dict:
        return {"root": self.root, "hashes": self.hashes, "commit": self.commit, "uncommitted": self.uncommitted}

    @classmethod
    def from_json(cls, data: dict) -> "Snapshot":
        return cls(data["root"], dict(data["hashes"]), data.get("commit", ""), list(data.get("uncommitted", [])))


def protected_files(root: Path) -> list[Path]:
    files = []
    for name in PROTECTED:
        top = root / name
        if top.is_file():
            files.append(top)
        elif top.is_dir():
            files += [p for p in top.rglob("*") if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(root).parts)
                      and p.suffix != ".pyc"]
    return sorted(files)


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in protected_files(root)}


def snapshot(root: Path) -> Snapshot:
    root = Path(root).resolve()
    return Snapshot(str(root), hashes(root), _git(root, "rev-parse", "HEAD"),
                    _git(root, "diff", "--name-only", "HEAD", "--", *PROTECTED).splitlines())


def check(snap: Snapshot) -> list[str]:
    """What changed since the snapshot: one line per file; empty when the instrument is untouched."""
    now = hashes(Path(snap.root))
    problems = [f"modified {p}" for p in sorted(now.keys() & snap.hashes.keys()) if now[p] != snap.hashes[p]]
    problems += [f"added {p}" for p in sorted(now.keys() - snap.hashes.keys())]
    problems += [f"removed {p}" for p in sorted(snap.hashes.keys() - now.keys())]
    return problems


def _git(root: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""
