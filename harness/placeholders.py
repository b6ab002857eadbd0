"""What a spec's `{...}` fields stand for when a stack is launched.

  {model} {port} {scenario} {python}   the model folder, the port, the scenario name, our interpreter
  {cores} {cpu_list}                   the CPUs this process may run on: their count, and their ids as
                                       "0-3,6" for engines that bind threads to cores
  {gguf}                               the GGUF file a model folder was built from (its manifest says)
  {engine:NAME}                        the interpreter of an installed engine environment
  {prepared:KEY}                       the output of the spec's `prepare: {KEY: [...]}` command for
                                       this model, built once and cached (e.g. an MLX conversion);
                                       inside that command {out} is the folder it must create
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.assets import cache_root, gguf_file, weights_checksum
from harness.environments import engine_info, engine_python
from harness.errors import HarnessError, StackError
from harness.machine import cpu_list, usable_cpus
from harness.stack import REPO_ROOT, StackSpec

FIELD = re.compile(r"\{([a-z_]+)(?::([^}]+))?\}")


@dataclass
class Placeholders:
    spec: StackSpec
    model: Path
    port: int
    scenario: str = ""
    log_dir: Path | None = None
    engines: dict[str, dict] = field(default_factory=dict)  # engines the command used, with their info
    env: dict[str, str] = field(default_factory=dict)  # what those engines need at launch
    out: Path | None = None  # inside a prepare command: the folder it must create

    def fill(self, text: str) -> str:
        return FIELD.sub(lambda m: self._value(m.group(1), m.group(2)), text)

    def _value(self, name: str, arg: str | None) -> str:
        simple = {"model": str(self.model), "port": str(self.port), "scenario": self.scenario,
                  "python": sys.executable, "cores": str(len(usable_cpus())),
                  "cpu_list": cpu_list(usable_cpus()), "out": str(self.out) if self.out else None}
        if simple.get(name) is not None and arg is None:
            return simple[name]
        if name == "gguf":
            return self._gguf()
        if name == "engine" and arg:
            return self._engine(arg)
        if name == "prepared" and arg:
            return str(self._prepared(arg))
        raise StackError(f"stack {self.spec.name}: unknown placeholder {{{name}{':' + arg if arg else ''}}}")

    def _gguf(self) -> str:
        gguf = gguf_file(Path(self.model))
        if gguf is None:
            raise StackError(f"stack {self.spec.name} needs a GGUF file, and model {self.model} was not built from one")
        return str(gguf)

    def _engine(self, name: str) -> str:
        try:
            python = engine_python(name)
        except HarnessError as exc:
            raise StackError(str(exc)) from None
        info = engine_info(name) or {}
        self.engines[name] = {k: v for k, v in info.items() if k != "launch_env"}
        self.env.update(info.get("launch_env") or {})
        return str(python)

    def _prepared(self, key: str) -> Path:
        command = self.spec.prepare.get(key)
        if not command:
            raise StackError(f"stack {self.spec.name}: {{prepared:{key}}} has no `prepare: {{{key}: [...]}}` command")
        # the command's hash in the name: a changed recipe never serves a folder the old one built
        recipe = hashlib.sha256(json.dumps(command).encode()).hexdigest()[:8]
        out = cache_root() / "prepared" / f"{self.spec.name}-{key}-{recipe}" / weights_checksum(Path(self.model))
        if (out / ".done").is_file():
            return out
        tmp = out.with_name(out.name + f".building-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        self.out = tmp
        try:
            args = [self.fill(c) for c in command]
        finally:
            self.out = None
        log = (self.log_dir or tmp.parent) / f"{self.spec.name}-prepare-{key}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            done = subprocess.run(args, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, **self.env})
        if done.returncode != 0 or not tmp.exists():
            from harness.launcher import tail

            raise StackError(f"stack {self.spec.name}: preparing {key} failed; last lines of {log}:\n{tail(log)}")
        (tmp / ".done").write_text("")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return out
