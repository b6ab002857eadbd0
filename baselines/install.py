"""`python -m baselines install ENGINE`: build the engine's own virtual environment, idempotently."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from baselines import openblas
from baselines.engines import ENGINES, Engine, Platform, Recipe
from harness.atomic import atomic_write_json
from harness.environments import INFO, engine_dir, engine_info
from harness.errors import HarnessError
from harness.machine import usable_cpus


class Step:
    """Runs one install step with a spinner, its output appended to the install log."""

    def __init__(self, console: Console, log: Path):
        self.console, self.log = console, log

    def __call__(self, title: str, cmd: list[str], env: dict | None = None) -> str:
        with self.console.status(f"{escape(title)}…"), self.log.open("a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, **(env or {})})
            log.write(done.stdout)
        if done.returncode != 0:
            last = [line for line in done.stdout.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
            raise HarnessError(f"{title} failed: {last[0].strip()[:300]} (full log: {self.log})")
        self.console.print(f"  [green]✓[/] {escape(title)}")
        return done.stdout


def _apt(step: Step, packages: tuple[str, ...]) -> None:
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise HarnessError(f"needs the Debian packages {', '.join(missing)}: sudo apt-get install -y {' '.join(missing)}")
    step("apt-get update", ["apt-get", "update", "-q"])
    step(f"apt-get install {' '.join(missing)}", ["apt-get", "install", "-y", "-q", *missing],
         env={"DEBIAN_FRONTEND": "noninteractive"})


def _preload(recipe: Recipe) -> openblas.Preload | None:
    """Debian's OpenBLAS where the engine needs it preloaded (its launch environment is recorded so
    specs need not know paths); None for the other engines."""
    if openblas.PACKAGE not in recipe.apt:
        return None
    lib = openblas.library()
    if lib is None:
        raise HarnessError(f"{openblas.PACKAGE} is installed but its libblas.so.3 was not found")
    return openblas.preload(lib)


def _versions(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out.stdout or "[]")}


def _distribution(requirement: str) -> str:
    """'llama-cpp-python[server]==0.3.36' -> 'llama-cpp-python'."""
    return re.split(r"[\[=<>!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _record(engine: Engine, recipe: Recipe, here: Platform, preload: openblas.Preload | None) -> dict:
    """Write engine.json: what is installed, which versions, what a launch needs."""
    versions = _versions(engine_dir(engine.name) / "venv" / "bin" / "python")
    info = {
        "engine": engine.name,
        "platform": engine.tag(here),
        "requirements": list(recipe.requirements),
        "build_env": dict(recipe.build_env),
        "version": versions.get(recipe.version_of or _distribution(recipe.requirements[0])),
        "packages": {_distribution(r): versions.get(_distribution(r)) for r in recipe.requirements}
                    | {k: versions[k] for k in ("torch", "transformers") if k in versions},
        "launch_env": preload.env if preload else {},
        "note": recipe.note,
        "installed_at": (engine_info(engine.name) or {}).get("installed_at")
                        or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if preload:  # recorded in every row of a stack using it
        info["blas_kernels"] = preload.kernels
    atomic_write_json(engine_dir(engine.name) / INFO, info)
    return info


def _installed_matches(engine: Engine, recipe: Recipe) -> bool:
    info = engine_info(engine.name)
    if not info or info.get("requirements") != list(recipe.requirements):
        return False
    if info.get("build_env", {}) != dict(recipe.build_env):  # built with other flags: build again
        return False
    python = engine_dir(engine.name) / "venv" / "bin" / "python"
    return python.exists() and subprocess.run([str(python), "-c", engine.check], capture_output=True).returncode == 0


def install(name: str, force: bool = False, console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    engine = ENGINES.get(name)
    if engine is None:
        raise HarnessError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
    here = Platform.here()
    recipe = engine.recipe(here)
    if recipe is None:
        needs = ", ".join(engine.recipes)
        raise HarnessError(f"{name} cannot be installed here: it needs {needs} (this machine: "
                           f"{here.system} {here.machine}, {'a' if here.cuda else 'no'} CUDA GPU)"
                           + (f". {engine.elsewhere}" if engine.elsewhere else ""))
    if not force and _installed_matches(engine, recipe):
        console.print(f"{name}: already installed ({engine_dir(name)})")
        return _record(engine, recipe, here, _preload(recipe))
    home = engine_dir(name)
    home.mkdir(parents=True, exist_ok=True)
    (home / INFO).unlink(missing_ok=True)  # written again only once everything below has worked
    log = home / "install.log"
    log.write_text(f"# {name} install, {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}\n")
    step = Step(console, log)
    console.print(f"[bold]{name}[/]: installing ({engine.install_time}) into {home}/venv; log: {log}")
    _apt(step, recipe.apt)
    venv = home / "venv"
    if force or recipe.build_env:  # a package built with other flags would count as already there
        shutil.rmtree(venv, ignore_errors=True)
    python = venv / "bin" / "python"
    if not python.exists():
        step("create venv", [sys.executable, "-m", "venv", str(venv)])
    step("upgrade pip", [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    build_env = {k: v.replace("{cores}", str(len(usable_cpus()))) for k, v in recipe.build_env.items()}
    # A wheel pip built earlier may have been built with other flags: build flags mean a fresh build.
    fresh = ["--no-cache-dir"] if recipe.build_env else []
    step(f"pip install {' '.join(recipe.requirements)}", [str(python), "-m", "pip", "install", *fresh,
                                                          *recipe.requirements],
         env=build_env)
    if recipe.remove:
        step(f"remove {' '.join(recipe.remove)}", [str(python), "-m", "pip", "uninstall", "-y", *recipe.remove])
    preload = _preload(recipe)
    step("check it imports", [str(python), "-c", engine.check], env=preload.env if preload else None)
    info = _record(engine, recipe, here, preload)
    console.print(f"[bold]{name}[/]: installed, version {info['version']}")
    return info


def installed_summary() -> list[tuple[str, str]]:
    here = Platform.here()
    rows = []
    for name, engine in ENGINES.items():
        info = engine_info(name)
        if info:
            state = f"installed {info['version']} ({info['platform']})"
        elif engine.recipe(here):
            state = f"not installed (install takes {engine.install_time})"
        else:
            state = f"not available here (needs {', '.join(engine.recipes)})"
        rows.append((name, state))
    return rows
