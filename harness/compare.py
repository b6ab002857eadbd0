"""`python -m harness compare`: score several stacks on one scenario in one run, then print the ratios.

The scoring is the scenario's own pytest module (one run id, one stack up at a time); this
command adds what a person comparing engines asks next: each stack's primary metric at every
load point as a ratio to each baseline measured in the same run, and, at concurrency 1, the
"bandwidth achieved" (weight bytes x decode tokens/s, as gpt-fast prints it) against the
machine's copy bandwidth measured before and after the run.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import machine as host
from harness.atomic import atomic_write_text
from harness.bandwidth import memory_bandwidth, weight_bytes
from harness.bench import new_run_id
from harness.errors import HarnessError
from harness.leaderboard import metric_label
from harness.row import ResultRow, read_rows
from harness.scenario import ScenarioSpec, load_scenario
from harness.stack import REPO_ROOT


@dataclass(frozen=True)
class Cell:
    """One stack at one load point: the median over its measured repeats (`--repeats N`)."""

    stack: str
    label: str
    status: str
    primary: float | None
    p99_ttft_ms: float | None
    median_tpot_ms: float | None
    concurrency: int | None
    repeats: int = 1  # measured repeats the medians are over
    primary_range: tuple[float, float] | None = None  # (min, max) of the primary metric over them


@dataclass(frozen=True)
class Ratio:
    stack: str
    baseline: str
    label: str
    value: float | None  # > 1: the stack is better, whatever the metric's direction


def ratio(value: float | None, base: float | None, direction: str) -> float | None:
    if not value or not base:
        return None
    return value / base if direction == "higher" else base / value


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def cells_of(rows: list[ResultRow], primary: str) -> list[Cell]:
    """One cell per (stack, load point), in the order first measured; repeats become medians, so a
    ratio is between medians, never between one repeat and another stack's last one."""
    groups: dict[tuple[str, str], list[ResultRow]] = {}
    for r in rows:
        if r.kind == "performance":
            groups.setdefault((r.stack, str((r.load_point or {}).get("label"))), []).append(r)
    out = []
    for (stack, label), group in groups.items():
        measured = [r for r in group if r.status in ("ok", "partial")] or group
        values = [r.metrics.get(primary) for r in measured if r.metrics.get(primary) is not None]
        out.append(Cell(stack, label, measured[-1].status, _median(values),
                        _median([r.metrics.get("p99_ttft_ms") for r in measured]),
                        _median([r.metrics.get("median_tpot_ms") for r in measured]),
                        (group[0].load_point or {}).get("concurrency"), len(measured),
                        (min(values), max(values)) if len(values) > 1 else None))
    return out


def ratios(cells: list[Cell], baselines: list[str], direction: str) -> list[Ratio]:
    by_key = {(c.stack, c.label): c for c in cells}
    return [Ratio(c.stack, b, c.label, ratio(c.primary, by_key[(b, c.label)].primary, direction))
            for c in cells for b in baselines if b != c.stack and (b, c.label) in by_key]


def decode_bandwidth(cell: Cell, model_bytes: int) -> float | None:
    """Bytes/s a concurrency-1 decode streams: weights x tokens/s between tokens (1 / TPOT)."""
    if cell.concurrency != 1 or not cell.median_tpot_ms:
        return None
    return model_bytes * 1e3 / cell.median_tpot_ms


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def render(scenario: ScenarioSpec, cells: list[Cell], rs: list[Ratio], model_bytes: int,
           copy_bw: float, labels: list[str]) -> Table:
    primary = metric_label(scenario.leaderboard.primary, scenario.leaderboard.labels)
    table = Table(title=f"{scenario.title}: {primary} ({scenario.leaderboard.direction} is better)")
    for col in ("stack", "load point", primary, "TTFT p99 ms", "TPOT p50 ms", "vs baselines", "bandwidth achieved"):
        table.add_column(col, justify="left" if col in ("stack", "load point", "vs baselines") else "right",
                         no_wrap=col in ("stack", "load point", primary))
    order = {label: i for i, label in enumerate(labels)}
    for c in sorted(cells, key=lambda c: (order.get(c.label, len(order)), c.stack)):
        vs = ", ".join(f"{r.value:.2f}x {r.baseline}" for r in rs
                       if r.stack == c.stack and r.label == c.label and r.value is not None)
        bw = decode_bandwidth(c, model_bytes)
        bw_text = "-" if bw is None else f"{bw / 1e9:.1f} GB/s = {100 * bw / copy_bw:.0f}%"
        value = _fmt(c.primary) if c.status in ("ok", "partial") else c.status
        if c.primary_range is not None and c.status in ("ok", "partial"):
            value += f" (median of {c.repeats}: {c.primary_range[0]:.1f}-{c.primary_range[1]:.1f})"
        table.add_row(c.stack, c.label, value, _fmt(c.p99_ttft_ms), _fmt(c.median_tpot_ms), vs or "-", bw_text)
    return table


def run_pytest(scenario_file: Path, stacks: list[str], profile: str, run_id: str, results_dir: Path,
               extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(scenario_file), "--profile", profile,
           "--run-id", run_id, "--results-dir", str(results_dir)]
    for s in stacks:
        cmd += ["--stack", s]
    return subprocess.run(cmd + extra, cwd=REPO_ROOT).returncode


def compare(scenario_name: str, stacks: list[str], baselines: list[str], profile: str, results_dir: Path,
            run_id: str | None, extra: list[str], console: Console) -> dict:
    """Score, then print and write (`runs/<run>/compare.json`) the comparison; returns the summary."""
    path = REPO_ROOT / "scenarios" / f"{scenario_name}.yaml"
    if not path.is_file():
        raise HarnessError(f"unknown scenario {scenario_name!r}: no {path.relative_to(REPO_ROOT)}")
    scenario = load_scenario(path)
    prof = scenario.profile(profile)
    from harness.assets import ensure_model

    model_bytes = weight_bytes(ensure_model(prof["model"]))
    run_id = run_id or new_run_id()
    console.print(f"run {run_id}: {', '.join(stacks)} on {scenario.title} ({profile}); measuring memory bandwidth")
    bw_before = memory_bandwidth()
    load_before = host.loadavg()
    code = run_pytest(REPO_ROOT / "scenarios" / f"test_{scenario_name}.py", stacks, profile, run_id, results_dir, extra)
    bw_after, load_after = memory_bandwidth(), host.loadavg()
    copy_bw = max(bw_before, bw_after)
    rows = [r for r in read_rows(results_dir) if r.run_id == run_id]
    cells = cells_of(rows, scenario.leaderboard.primary)
    base = [b for b in baselines if b in stacks] or [s for s in stacks[1:]]
    rs = ratios(cells, base, scenario.leaderboard.direction)
    labels = [c.label for c in cells_of(sorted(rows, key=lambda r: r.started_at), scenario.leaderboard.primary)]
    console.print(render(scenario, cells, rs, model_bytes, copy_bw, list(dict.fromkeys(labels))))
    console.print(f"weights {model_bytes / 1e6:.0f} MB as prepared; copy bandwidth {bw_before / 1e9:.1f} / "
                  f"{bw_after / 1e9:.1f} GB/s before / after; load average {load_before} -> {load_after}; "
                  f"pytest exit code {code}")
    summary = {"run_id": run_id, "scenario": scenario_name, "profile": profile, "stacks": stacks, "baselines": base,
               "weight_bytes": model_bytes, "copy_bandwidth_before": bw_before, "copy_bandwidth_after": bw_after,
               "loadavg_before": load_before, "loadavg_after": load_after, "pytest_exit_code": code,
               "cells": [asdict(c) for c in cells], "ratios": [asdict(r) for r in rs],
               "bandwidth_achieved": {c.stack: decode_bandwidth(c, model_bytes) for c in cells
                                      if decode_bandwidth(c, model_bytes)}}
    out = Path(results_dir) / "runs" / run_id / "compare.json"
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    console.print(f"summary: {out}")
    return summary
