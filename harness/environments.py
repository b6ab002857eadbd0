"""Engine environments: one isolated virtual environment per serving engine, outside the harness's own.

Engines pin their own torch and friends, so each lives in `<cache>/engines/<name>/venv` with an
`engine.json` (written last, by `python -m baselines install NAME`) recording what was installed.
Specs refer to an engine's interpreter as `{engine:NAME}`.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.assets import cache_root
from harness.errors import HarnessError

INFO = "engine.json"


def engine_dir(name: str) -> Path:
    return cache_root() / "engines" / name


def engine_info(name: str) -> dict | None:
    try:
        return json.loads((engine_dir(name) / INFO).read_text())
    except (OSError, ValueError):
        return None


def engine_python(name: str) -> Path:
    python = engine_dir(name) / "venv" / "bin" / "python"
    if engine_info(name) is None or not python.exists():
        raise HarnessError(f"engine {name} is not installed: run `python -m baselines install {name}`")
    return python
