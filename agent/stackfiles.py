"""The stack a workspace holds: its spec (stack.yaml, read as plain YAML) and the files beside it.

The harness launches every stack from the repository root, so a spec names its code by a path
(`python results/stacks/engine-a/main.py ...`). Copying a stack rewrites those paths.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from agent.atomic import write_text
from harness.stack import REPO_ROOT

SPEC = "stack.yaml"
SKIP = {"__pycache__", ".git", "results", "logs", ".agent", ".pytest_cache"}


def load(stack_dir: Path) -> dict:
    data = yaml.safe_load((Path(stack_dir) / SPEC).read_text())
    if not isinstance(data, dict) or "command" not in data:
        raise ValueError(f"{stack_dir}/{SPEC} is not a stack spec (no command)")
    return data


def save(stack_dir: Path, data: dict) -> None:
    write_text(Path(stack_dir) / SPEC, yaml.safe_dump(data, sort_keys=False, width=120, default_flow_style=None))


def code_files(stack_dir: Path) -> list[Path]:
    root = Path(stack_dir)
    return sorted(p for p in root.rglob("*") if p.is_file() and not SKIP & set(p.relative_to(root).parts)
                  and p.suffix != ".pyc")


def relocate(command: list, src: Path, dst: Path, relative: bool) -> list[str]:
    """Arguments that name a file of the stack at `src` name the same file under `dst`."""
    src, out = Path(src).resolve(), []
    for arg in command:
        arg = str(arg)
        path = Path(arg) if Path(arg).is_absolute() else REPO_ROOT / arg
        try:
            inside = path.resolve().is_relative_to(src) and path.exists() and "{" not in arg
        except (OSError, ValueError):
            inside = False
        if inside:
            new = Path(dst).resolve() / path.resolve().relative_to(src)
            arg = str(new.relative_to(REPO_ROOT)) if relative and new.is_relative_to(REPO_ROOT) else str(new)
        out.append(arg)
    return out


def copy(src: Path, dst: Path, relative: bool, name: str | None = None, files: list[str] | None = None) -> dict:
    """Copy a stack's spec and code (or only `files`); returns the new spec (command relocated, name set)."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    for f in [src / f for f in files] if files is not None else code_files(src):
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    data = load(src)
    data["command"] = relocate(data["command"], src, dst, relative)
    if name:
        data["name"] = name
    save(dst, data)
    return data
