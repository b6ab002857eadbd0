"""A stack's tunable flags (knobs): read from its stack.yaml, or from `main.py --help` as a fallback.

    knobs:                       # in stack.yaml; the harness ignores this key
      max-batch-size: {values: [1, 2, 4, 8, 16], naive: 1}
      dtype: {values: [float32, bfloat16], naive: float32}

The current value of each knob is the `--name value` pair in the spec's `command`.
"""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.machine import usable_cpus

# Flags that wire the stack to the harness, never tuned.
WIRING = {"model", "port", "host", "served-model-name", "help", "log-level", "model-dir", "max-model-len"}
OPTION = re.compile(r"^\s+--([a-z0-9][a-z0-9-]*)(?:[ =](\{[^}]+\}|[A-Z][A-Z0-9_]*))?")
DEFAULT = re.compile(r"\(default:\s*(-?\d+)\)")
CORES = len(usable_cpus())


def _ladder(low: int, high: int) -> tuple[str, ...]:
    return tuple(str(2 ** k) for k in range(0, 16) if low <= 2 ** k <= high)


# Serving knowledge for flags that --help names without a range: (values in search order, naive value).
# The naive end is the deliberately slow one: one sequence at a time, small prefill chunks, float32, one thread.
CATALOGUE: dict[str, tuple[tuple[str, ...], str]] = {
    "max-num-seqs": (_ladder(1, 32), "1"),
    "max-batch-size": (_ladder(1, 32), "1"),
    "max-num-batched-tokens": (_ladder(16, 2048), "16"),
    "prefill-chunk": (_ladder(16, 512), "16"),
    "dtype": (("float32", "bfloat16"), "float32"),
    "threads": (tuple(str(n) for n in range(1, CORES + 1)), "1"),
    "stream-interval": (("1", "2", "4", "8"), "1"),  # tokens per stream chunk after the first
}


@dataclass(frozen=True)
class Knob:
    name: str  # the flag without its dashes
    values: tuple[str, ...]  # the search space, in order (numbers ascending)
    naive: str  # the deliberately naive starting value

    def index(self, value: str) -> int:
        return self.values.index(value) if value in self.values else -1

    def neighbours(self, value: str) -> list[str]:
        """Other values, nearest first; at equal distance the later (usually larger) one first."""
        i = self.index(value)
        if i < 0:
            return list(self.values)
        others = [(abs(j - i), -j, v) for j, v in enumerate(self.values) if j != i]
        return [v for _, _, v in sorted(others)]


def from_spec(data: dict) -> list[Knob]:
    knobs = []
    for name, cfg in (data.get("knobs") or {}).items():
        cfg = cfg if isinstance(cfg, dict) else {"values": cfg}
        values = tuple(str(v) for v in cfg.get("values") or ())
        if not values:
            raise ValueError(f"knob {name} has no values")
        knobs.append(Knob(str(name), values, str(cfg.get("naive", values[0]))))
    return knobs


def from_help(text: str) -> list[Knob]:
    """Knobs from argparse help: catalogued flags with their ranges, other choices as listed, other integers
    with a printed default as a ladder of powers of two. Flags without a value and wiring flags are skipped."""
    knobs, seen = [], set()
    lines = text.splitlines()
    for n, line in enumerate(lines):
        m = OPTION.match(line)
        if not m or not m.group(2) or m.group(1) in WIRING or m.group(1) in seen:
            continue
        name, arg = m.group(1), m.group(2)
        choices = tuple(v.strip() for v in arg[1:-1].split(",")) if arg.startswith("{") else ()
        if name in CATALOGUE:
            values, naive = CATALOGUE[name]
            values = tuple(v for v in values if not choices or v in choices)
            knob = Knob(name, values, naive if naive in values else values[0]) if values else None
        elif choices:
            knob = Knob(name, choices, choices[0])
        elif d := DEFAULT.search(" ".join(lines[n:n + 2])):
            default = int(d.group(1))
            knob = Knob(name, tuple(sorted(set(_ladder(1, max(8, 2 * default))) | {str(default)}, key=int)), "1") \
                if default >= 1 else None
        else:
            knob = None
        if knob:
            knobs.append(knob)
            seen.add(name)
    return knobs


def help_text(main_py: Path, timeout_s: float = 120) -> str:
    try:
        return subprocess.run([sys.executable, str(main_py), "--help"], capture_output=True, text=True,
                              timeout=timeout_s).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def read(data: dict, stack_dir: Path) -> list[Knob]:
    """The knob space of a stack: its `knobs:` section, else its main.py's --help."""
    knobs = from_spec(data)
    if knobs or not (stack_dir / "main.py").is_file():
        return knobs
    return from_help(help_text(stack_dir / "main.py"))


def current(command: list[str], knobs: list[Knob]) -> dict[str, str]:
    """Each knob's value in the command; a knob absent from the command is at its naive value."""
    values = {}
    for k in knobs:
        flag = f"--{k.name}"
        values[k.name] = str(command[command.index(flag) + 1]) if flag in command[:-1] else k.naive
    return values


def with_value(command: list[str], name: str, value: str) -> list[str]:
    flag = f"--{name}"
    command = list(command)
    if flag in command[:-1]:
        command[command.index(flag) + 1] = str(value)
    else:
        command += [flag, str(value)]
    return command
