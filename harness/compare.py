"""`python -m harness compare`: score several stacks on one scenario in one run, then print the ratios.

The scoring is the scenario's own pytest module (one run id, one stack up at a time); this
command adds what a person comparing engines asks next: each stack's primary metric at every
load point as a ratio to each baseline measured in the same run, and, at concurrency 1, the
"bandwidth achieved" (weight bytes x decode tokens/s, as gpt-fast prints it) against the
machine's copy bandwidth measured just before and after that cell (the run's own copies, before
and after it, stand in for a cell without them). The bytes are those the stack loads
(harness.bandwidth.weights_read); a stack whose /metrics show several tokens per forward, or
that says it speculates and shows no forward count, gets the reason instead of a number. Beside
each such cell, the copies and the cores' bf16 matmul speed measured with them (harness.compute):
a slow repeat then shows whether the machine's memory, its cores, or neither slowed.
"""
from __future__ import annotations

import json
import secrets
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import machine as host
from harness import session
from harness.atomic import atomic_write_text
from harness.bandwidth import (
    ONE_TOKEN_PER_FORWARD,
    Weights,
    declared_speculation,
    memory_bandwidth,
    tokens_per_forward,
    weights_read,
)
from harness.bench import new_run_id
from harness.compute import matmul_speed
from harness.errors import HarnessError
from harness.leaderboard import metric_label
from harness.row import ResultRow, read_rows
from harness.scenario import ScenarioSpec, load_scenario
from harness.stack import REPO_ROOT, SCOPE, resolve_stack


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
    bandwidth_withheld: str | None = None  # why weights x tok/s is not this stack's memory traffic
    copy_bandwidth: float | None = None  # B/s of the copies beside the cell (harness.bench: `--copy-bandwidth`)
    per_repeat: tuple[tuple[int, float], ...] = ()  # (repeat, primary) of each measured repeat
    matmul_speed: float | None = None  # FLOP/s of the bf16 matmuls beside the cell (harness.compute)
    beside: tuple[tuple[int, float | None, float | None], ...] = ()  # (repeat, copy B/s, matmul FLOP/s)


@dataclass(frozen=True)
class Ratio:
    stack: str
    baseline: str
    label: str
    value: float | None  # > 1: the stack is better, whatever the metric's direction
    per_repeat: tuple[float, ...] = ()  # repeat r against the baseline's repeat r: a round's pair with --rounds


def ratio(value: float | None, base: float | None, direction: str) -> float | None:
    if not value or not base:
        return None
    return value / base if direction == "higher" else base / value


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def bandwidth_withheld(rows: list[ResultRow], features: tuple[str, ...] = ()) -> str | None:
    """Why "bandwidth achieved" would be wrong for one cell's rows, or None where each forward yields
    one token: the counters that moved during the cell first (the worst repeat counts), else what
    the spec declares, its speculation flags or one of the scenario's `features` (optimisations)."""
    measured = [t for r in rows if (t := tokens_per_forward(r.counters, r.metrics.get("total_output_tokens")))]
    if measured:
        worst = max(measured)
        return f"n/a: {worst:.1f} tokens per forward" if worst > ONE_TOKEN_PER_FORWARD else None
    info = rows[-1].stack_info or {}
    why = declared_speculation(info.get("flags"), info.get("command") or ())
    why = why or next((f"declares {w!r}" for w in info.get("supports") or () if w in features), None)
    return f"n/a: {why}, and /metrics counts no forwards" if why else None


def cells_of(rows: list[ResultRow], primary: str, features: tuple[str, ...] = ()) -> list[Cell]:
    """One cell per (stack, load point), in the order first measured; repeats become medians, so a
    ratio is between medians, never between one repeat and another stack's last one. `features`:
    the scenario's optimisations, which a stack declaring them may decode several tokens per forward."""
    groups: dict[tuple[str, str], list[ResultRow]] = {}
    for r in rows:
        if r.kind == "performance":
            groups.setdefault((r.stack, str((r.load_point or {}).get("label"))), []).append(r)
    out = []
    for (stack, label), group in groups.items():
        measured = [r for r in group if r.status in MEASURED] or group
        per_repeat = tuple(sorted((r.repeat, v) for r in measured if (v := r.metrics.get(primary)) is not None))
        values = [v for _, v in per_repeat]
        beside = machine_beside(measured)
        out.append(Cell(stack, label, measured[-1].status, _median(values),
                        _median([r.metrics.get("p99_ttft_ms") for r in measured]),
                        _median([r.metrics.get("median_tpot_ms") for r in measured]),
                        (group[0].load_point or {}).get("concurrency"), len(measured),
                        (min(values), max(values)) if len(values) > 1 else None,
                        bandwidth_withheld(measured, features), _median([b[1] for b in beside]), per_repeat,
                        _median([b[2] for b in beside]), beside))
    return out


def machine_beside(rows: list[ResultRow]) -> tuple[tuple[int, float | None, float | None], ...]:
    """Per repeat the machine beside a cell: the better of the copies just before and after it, and
    of the matmul speeds; repeats that measured neither are left out."""
    out = []
    for r in sorted(rows, key=lambda r: r.repeat):
        copy, flops = (_best(r.machine or {}, f"{name}_before", f"{name}_after")
                       for name in ("copy_bandwidth", "matmul_flops"))
        if copy is not None or flops is not None:
            out.append((r.repeat, copy, flops))
    return tuple(out)


def _best(values: dict, *keys: str) -> float | None:
    present = [v for k in keys if (v := values.get(k))]
    return max(present) if present else None


MEASURED = ("ok", "partial")  # a cell whose outputs or guard failed has numbers, and no ratio


def ratios(cells: list[Cell], baselines: list[str], direction: str) -> list[Ratio]:
    """Each stack against each baseline at the same load point; None where either cell failed."""
    by_key = {(c.stack, c.label): c for c in cells}
    return [Ratio(c.stack, b, c.label, ratio(c.primary, base.primary, direction), paired(c, base, direction))
            if c.status in MEASURED and base.status in MEASURED else Ratio(c.stack, b, c.label, None)
            for c in cells for b in baselines if b != c.stack and (base := by_key.get((b, c.label)))]


def paired(cell: Cell, base: Cell, direction: str) -> tuple[float, ...]:
    """The ratio of each repeat both cells measured: with --rounds, two stacks measured minutes apart."""
    theirs = dict(base.per_repeat)
    return tuple(ratio(v, theirs[r], direction) for r, v in cell.per_repeat if r in theirs and v and theirs[r])


def decode_bandwidth(cell: Cell, model_bytes: int) -> float | None:
    """Bytes/s a concurrency-1 decode streams: weights x tokens/s between tokens (1 / TPOT); None
    where that product is not its memory traffic (see `bandwidth_withheld`)."""
    if cell.concurrency != 1 or not cell.median_tpot_ms or cell.bandwidth_withheld:
        return None
    return model_bytes * 1e3 / cell.median_tpot_ms


def bandwidth_text(cell: Cell, weights: Weights | None, copy_bw: float) -> str:
    """The "bandwidth achieved" column: a number, the reason there is none, or "-" off concurrency 1.
    The percentage is of the copies beside the cell where it has them, else of the run's `copy_bw`."""
    if cell.concurrency != 1 or not cell.median_tpot_ms:
        return "-"
    if cell.bandwidth_withheld:
        return cell.bandwidth_withheld
    if weights is None:
        return "n/a: the GGUF file it loads was not found"
    bw = decode_bandwidth(cell, weights.nbytes)
    copy_bw = cell.copy_bandwidth or copy_bw
    if bw > copy_bw:  # the copies met a slower phase of the machine than the cell did
        return f"{bw / 1e9:.1f} GB/s, above the copy's {copy_bw / 1e9:.1f}: the machine's bandwidth moved, no %"
    return f"{bw / 1e9:.1f} GB/s = {100 * bw / copy_bw:.0f}% of {copy_bw / 1e9:.1f}"


def stack_weights(rows: list[ResultRow], model_dir: Path) -> dict[str, Weights | None]:
    """Per stack, the weights it reads (from the spec command its rows record)."""
    commands = {r.stack: (r.stack_info or {}).get("command") or () for r in rows}
    return {stack: weights_read(model_dir, command) for stack, command in commands.items()}


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def ratio_text(r: Ratio, rounds: int) -> str:
    """"5.76x vllm", and with several rounds each round's own: "5.76x vllm (rounds 6.29 5.86 3.73)"."""
    text = f"{r.value:.2f}x {r.baseline}"
    return text + f" (rounds {' '.join(f'{v:.2f}' for v in r.per_repeat)})" if rounds > 1 and r.per_repeat else text


def beside_text(cell: Cell, rounds: int) -> str:
    """The machine beside a cell: "45.7 GB/s, 424 GFLOP/s" (medians), or with several rounds each
    round's: "45.7 44.6 27.8 GB/s, 424 420 301 GFLOP/s"; "-" where none was measured."""
    if not cell.beside:
        return "-"

    def part(values: list[float | None], median: float | None, unit: str, spec: str) -> str | None:
        if median is None:
            return None
        shown = values if rounds > 1 and len(values) > 1 else [median]
        return " ".join("-" if v is None else format(v / 1e9, spec) for v in shown) + f" {unit}"
    parts = (part([b[1] for b in cell.beside], cell.copy_bandwidth, "GB/s", ".1f"),
             part([b[2] for b in cell.beside], cell.matmul_speed, "GFLOP/s", ".0f"))
    return ", ".join(p for p in parts if p)


def render(scenario: ScenarioSpec, cells: list[Cell], rs: list[Ratio], weights: dict[str, Weights | None],
           copy_bw: float, labels: list[str], rounds: int = 1) -> Table:
    primary = metric_label(scenario.leaderboard.primary, scenario.leaderboard.labels)
    table = Table(title=f"{scenario.title}: {primary} ({scenario.leaderboard.direction} is better)")
    for col in ("stack", "load point", primary, "TTFT p99 ms", "TPOT p50 ms", "vs baselines", "bandwidth achieved",
                "machine beside"):
        table.add_column(col, justify="left" if col in ("stack", "load point", "vs baselines") else "right",
                         no_wrap=col in ("stack", "load point", primary))
    order = {label: i for i, label in enumerate(labels)}
    for c in sorted(cells, key=lambda c: (order.get(c.label, len(order)), c.stack)):
        vs = ", ".join(ratio_text(r, rounds) for r in rs
                       if r.stack == c.stack and r.label == c.label and r.value is not None)
        bw_text = bandwidth_text(c, weights.get(c.stack), copy_bw)
        value = _fmt(c.primary) if c.status in MEASURED else c.status
        if c.primary_range is not None and c.status in MEASURED:
            value += f" (median of {c.repeats}: {c.primary_range[0]:.1f}-{c.primary_range[1]:.1f})"
        table.add_row(c.stack, c.label, value, _fmt(c.p99_ttft_ms), _fmt(c.median_tpot_ms), vs or "-", bw_text,
                      beside_text(c, rounds))
    return table


@dataclass(frozen=True)
class Round:
    """One pytest session of a compare run: its stacks in the order they are scored, and its arguments."""

    stacks: list[str]
    args: list[str]


def chosen_baselines(stacks: list[str], baselines: list[str]) -> list[str]:
    """The names, as rows carry them, of the stacks the others are compared with: the `--baseline`
    ones (a name or the `--stack` value itself), else every stack but the first. Every `--stack`
    must resolve, and every `--baseline` be one of them."""
    names = {arg: resolve_stack(SCOPE.sub("", arg)).name for arg in stacks}
    unknown = [b for b in baselines if b not in names and b not in names.values()]
    if unknown:
        raise HarnessError(f"--baseline {unknown[0]}: not one of the stacks compared "
                           f"({', '.join(names.values())})")
    chosen = [names.get(b, b) for b in baselines]
    return chosen or [names[s] for s in stacks[1:]]


def plan_rounds(stacks: list[str], rounds: int, extra: list[str], salt: str) -> list[Round]:
    """`--rounds N`: N sessions of one repeat each, the stack order reversed every other round (a b c,
    c b a, a b c), so a phase of the machine slower than a round (a neighbour, a memory bandwidth
    that halves for minutes) falls on every stack alike instead of on whichever was up then.
    Round r measures repeat r, salted as a repeat is; only the first judges accuracy; all share
    one salt, and only the last rewrites the leaderboard."""
    if rounds < 1:
        raise HarnessError("--rounds must be at least 1")
    if rounds == 1:
        return [Round(list(stacks), list(extra))]
    clash = [a for a in extra if a.split("=")[0] in ("--repeats", "--first-repeat")]
    if clash:
        raise HarnessError(f"--rounds sets the repeats itself: drop {' '.join(clash)} from the pytest arguments "
                           "(with --rounds N each cell is measured N times, once a round)")
    salted = [] if any(a.split("=")[0] == "--salt" for a in extra) else ["--salt", salt]
    quiet = ["--no-leaderboard"]
    return [Round(list(stacks) if r % 2 == 0 else list(reversed(stacks)),
                  [*extra, *salted, "--first-repeat", str(r), *(quiet if r < rounds - 1 else [])])
            for r in range(rounds)]


def run_pytest(scenario_file: Path, stacks: list[str], profile: str, run_id: str, results_dir: Path,
               extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(scenario_file), "--profile", profile,
           "--run-id", run_id, "--results-dir", str(results_dir), "--copy-bandwidth"]
    for s in stacks:
        cmd += ["--stack", s]
    return session.run(cmd + extra, cwd=REPO_ROOT)


STOPPED = 130  # the exit code of a run stopped by Ctrl-C or SIGTERM (not one of pytest's)


def score_rounds(scenario_file: Path, plan: list[Round], profile: str, run_id: str, results_dir: Path,
                 console: Console) -> int:
    """pytest's exit code over the rounds: 0 when all passed, 1 when some cell failed; anything else
    (an interrupt, a usage error) ends the run at that round and is returned."""
    worst = 0
    for i, r in enumerate(plan):
        if len(plan) > 1:
            console.print(f"round {i + 1} of {len(plan)}: {', '.join(r.stacks)}")
        try:
            code = run_pytest(scenario_file, r.stacks, profile, run_id, results_dir, r.args)
        except KeyboardInterrupt:
            console.print("interrupted: its stacks were stopped; the cells measured so far are kept")
            return STOPPED
        if code not in (0, 1):
            return code
        worst = max(worst, code)
    return worst


def compare(scenario_name: str, stacks: list[str], baselines: list[str], profile: str, results_dir: Path,
            run_id: str | None, extra: list[str], console: Console, rounds: int = 1) -> dict:
    """Score, then print and write (`runs/<run>/compare.json`) the comparison; returns the summary."""
    path = REPO_ROOT / "scenarios" / f"{scenario_name}.yaml"
    if not path.is_file():
        raise HarnessError(f"unknown scenario {scenario_name!r}: no {path.relative_to(REPO_ROOT)}")
    scenario = load_scenario(path)
    prof = scenario.profile(profile)
    base = chosen_baselines(stacks, baselines)  # before any probe: a wrong name is one line, nothing written
    plan = plan_rounds(stacks, rounds, extra, secrets.token_hex(4))
    from harness.assets import ensure_model

    model_dir = ensure_model(prof["model"])
    run_id = run_id or new_run_id()
    console.print(f"run {run_id}: {', '.join(stacks)} on {scenario.title} ({profile}); measuring memory bandwidth")
    bw_before, flops_before = memory_bandwidth(), matmul_speed()
    load_before = host.loadavg()
    code = score_rounds(REPO_ROOT / "scenarios" / f"test_{scenario_name}.py", plan, profile, run_id, results_dir, console)
    if code == STOPPED:  # the summary of what was measured, at once, with the machine as it was before
        bw_after, flops_after, load_after = bw_before, flops_before, host.loadavg()
    else:
        bw_after, flops_after, load_after = memory_bandwidth(), matmul_speed(), host.loadavg()
    copy_bw = max(bw_before, bw_after)
    rows = [r for r in read_rows(results_dir) if r.run_id == run_id]
    if not rows:
        if code == STOPPED:
            raise KeyboardInterrupt
        raise HarnessError(f"pytest exited with code {code} and measured nothing (run {run_id}: no rows, no summary)")
    cells = cells_of(rows, scenario.leaderboard.primary, scenario.features)
    weights = stack_weights(rows, model_dir)
    rs = ratios(cells, base, scenario.leaderboard.direction)
    labels = [c.label for c in cells_of(sorted(rows, key=lambda r: r.started_at), scenario.leaderboard.primary)]
    console.print(render(scenario, cells, rs, weights, copy_bw, list(dict.fromkeys(labels)), rounds))
    read = "; ".join(sorted({f"{w.nbytes / 1e6:.0f} MB {w.source}" for w in weights.values() if w}))
    console.print(f"weights read per decode step: {read or '-'}; copy bandwidth {bw_before / 1e9:.1f} / "
                  f"{bw_after / 1e9:.1f} GB/s, bf16 matmul {flops_before / 1e9:.0f} / {flops_after / 1e9:.0f} GFLOP/s "
                  f"before / after; load average {load_before} -> {load_after}; "
                  f"pytest exit code {code}")
    summary = {"run_id": run_id, "scenario": scenario_name, "profile": profile, "stacks": stacks, "baselines": base,
               "rounds": rounds,
               "weights": {s: asdict(w) if w else None for s, w in weights.items()},
               "copy_bandwidth_before": bw_before, "copy_bandwidth_after": bw_after,
               "matmul_flops_before": flops_before, "matmul_flops_after": flops_after,
               "loadavg_before": load_before, "loadavg_after": load_after, "pytest_exit_code": code,
               "cells": [asdict(c) for c in cells], "ratios": [asdict(r) for r in rs],
               "bandwidth_achieved": {c.stack: bw for c in cells
                                      if (w := weights.get(c.stack)) and (bw := decode_bandwidth(c, w.nbytes))},
               "bandwidth_withheld": {c.stack: c.bandwidth_withheld for c in cells
                                      if c.concurrency == 1 and c.bandwidth_withheld}}
    out = Path(results_dir) / "runs" / run_id / "compare.json"
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    console.print(f"summary: {out}")
    if code == STOPPED:
        raise KeyboardInterrupt
    return summary
