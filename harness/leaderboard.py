"""Turn result rows into results/LEADERBOARD.md and one plot per (setting, profile).

One table per (setting, profile), and per kind of CPU where runs of a setting come from more than
one (an EPYC's table never hides a Xeon's), from one run only: the latest that has rows for it
(earlier runs are listed, never set beside it). Only stacks whose oracle passed in that run are
ranked and get ratios, against baselines that passed too, measured on the same machine; a stack
that failed, crashed, did not start or does not apply is listed with its reason. The output holds no timestamp
and is sorted throughout, so a rerun over the same rows gives the same bytes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from harness.atomic import atomic_write_text
from harness.metrics import metric_label
from harness.plots import PlotPoint, PlotSeries, PlotSpec, write_plot
from harness.row import RUNS_DIR, SALTED_SCHEMA, ResultRow, read_rows
from harness.scenario import LeaderboardSpec, ScenarioSpec, find_scenarios, names_point
from harness.stack import OFF_VARIANT

LEADERBOARD_FILE = "LEADERBOARD.md"
PLOTS_DIR = "plots"

# Stacks every other stack is compared against when they ran in the same run.
BASELINES = frozenset({"hf-reference", "vllm", "sglang", "llamacpp", "mlx-lm"})

PERF_OK = ("ok", "partial")
DASH = "—"
ACCURACY_SUMMARY_CHARS = 60
ERROR_CHARS = 80
EARLIER_LISTED = 5

# For rows whose setting has no scenario YAML: metrics the harness computes for every unit.
DEFAULT_BOARD = LeaderboardSpec(
    primary="output_throughput",
    direction="higher",
    columns=("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_e2el_ms", "p99_e2el_ms"),
    plot=("output_throughput", "median_ttft_ms"),
)


def format_value(value: float | None) -> str:
    if value is None:
        return DASH
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_ratio(ratio: float | None) -> str:
    return DASH if ratio is None else f"{ratio:.2f}×"


def shorten(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


# --------------------------------------------------------------------------- reading rows


@dataclass(frozen=True)
class Section:
    setting: str
    profile: str
    title: str
    board: LeaderboardSpec
    has_scenario: bool
    rows: tuple[ResultRow, ...]
    machine: str | None = None  # the kind of CPU, where the setting's runs come from more than one

    @property
    def slug(self) -> str:
        where = f"-{self.machine}" if self.machine else ""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.setting}-{self.profile}{where}")

    @property
    def heading(self) -> str:
        where = f" — {self.machine}" if self.machine else ""
        return f"{self.title} — profile `{self.profile}`{where}"

    @property
    def keys(self) -> tuple[str, ...]:
        """The metric columns, primary first."""
        cols = self.board.columns
        return cols if self.board.primary in cols else (self.board.primary, *cols)


@dataclass(frozen=True)
class StackEntry:
    """What one table row shows for one stack."""

    stack: str
    run_id: str
    rows: tuple[ResultRow, ...]  # this stack's rows of this section in run_id
    load_label: str | None  # the load point the numbers were read at
    load_note: str  # "partial", "rate=1.0 crashed", ...
    values: dict[str, float | None]
    failure: str | None  # shown in place of numbers when no usable performance row exists
    accuracy: str
    passed: bool = False  # the oracle passed in this run: only such stacks are ranked and compared
    rank: int | None = None


def machine_key(row: ResultRow) -> tuple:
    """Rows are comparable only when measured on one kind of machine."""
    m = row.machine or {}
    return (m.get("cpu"), m.get("cores"), m.get("gpu"), m.get("cpu_family_model"), tuple(m.get("isa") or ()))


def _load_label(row: ResultRow) -> str:
    return str((row.load_point or {}).get("label") or "load")


def _load_x(row: ResultRow, key: str | None = None) -> float | None:
    """The load point's size: its request rate, else its concurrency; everything at once is
    infinite. `key`: the scenario's own point key to read instead (its plot's x axis)."""
    point = row.load_point or {}
    if key is None and point.get("label", "").startswith("rate=inf"):
        return math.inf
    for name in (key,) if key else ("request_rate", "concurrency"):
        value = point.get(name)
        if value is None or isinstance(value, bool):
            continue
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _mixed_loads(rows) -> bool:
    """Whether the performance points are sized both by request rate and by concurrency (a
    concurrency-1 point beside a Poisson one): one numeric axis would put them on one scale, so
    they are drawn as labelled categories instead."""
    points = [r.load_point or {} for r in rows if r.kind == "performance"]
    return (any(p.get("request_rate") is not None for p in points)
            and any(p.get("request_rate") is None and p.get("concurrency") is not None for p in points))


def _x_label(rows: tuple[ResultRow, ...]) -> str:
    points = [r.load_point or {} for r in rows if r.kind == "performance"]
    if any(p.get("request_rate") is not None for p in points):
        return "request rate (req/s)"
    if any(p.get("concurrency") is not None for p in points):
        return "concurrency"
    return "load point"


def _run_order(rows: list[ResultRow]) -> dict[str, tuple[str, str]]:
    """Sort key per run id: its earliest row's started_at, then the id."""
    starts: dict[str, str] = {}
    for row in rows:
        seen = starts.get(row.run_id)
        if seen is None or (row.started_at and (not seen or row.started_at < seen)):
            starts[row.run_id] = row.started_at
    return {run: (start, run) for run, start in starts.items()}


def _board_for(setting: str, scenarios: list[ScenarioSpec]) -> ScenarioSpec | None:
    return next((s for s in scenarios if s.setting == setting), None)


def cpu_kind(row: ResultRow) -> str:
    """The CPU a row was measured on, as tables name it ("Intel Xeon Processor", "AMD EPYC")."""
    cpu = str((row.machine or {}).get("cpu") or "machine not recorded")
    return " ".join(re.sub(r"\((R|TM|tm)\)", "", cpu).split())


def _by_machine(group: list[ResultRow]) -> dict[str | None, list[ResultRow]]:
    """A setting's rows split by the kind of CPU of each run (a run's first row names it), or all
    together under None where every run used one kind."""
    kind_of_run: dict[str, str] = {}
    for row in sorted(group, key=lambda r: (r.run_id, r.started_at, r.name)):
        kind_of_run.setdefault(row.run_id, cpu_kind(row))
    if len(set(kind_of_run.values())) < 2:
        return {None: group}
    split: dict[str | None, list[ResultRow]] = {}
    for row in group:
        split.setdefault(kind_of_run[row.run_id], []).append(row)
    return split


def _sections(rows: list[ResultRow], scenarios: list[ScenarioSpec]) -> list[Section]:
    groups: dict[tuple[str, str], list[ResultRow]] = {}
    for row in rows:
        groups.setdefault((row.setting, row.profile), []).append(row)
    sections = []
    for (setting, profile), group in sorted(groups.items()):
        spec = _board_for(setting, scenarios)
        for machine, part in sorted(_by_machine(group).items(), key=lambda kv: kv[0] or ""):
            sections.append(
                Section(
                    setting=setting,
                    profile=profile,
                    title=spec.title if spec else setting,
                    board=spec.leaderboard if spec else DEFAULT_BOARD,
                    has_scenario=spec is not None,
                    rows=tuple(sorted(part, key=lambda r: (r.run_id, r.stack, r.started_at, r.name))),
                    machine=machine,
                )
            )
    return sections


# --------------------------------------------------------------------------- one stack's numbers


def _median(rows: list[ResultRow], key: str) -> float | None:
    values = [
        float(v)
        for r in rows
        if isinstance(v := r.metrics.get(key), (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]
    return float(np.median(values)) if values else None


def _pick_label(ok_rows: list[ResultRow], choice: str) -> str | None:
    """The load point the leaderboard reads: "last" = the largest load measured, else a label or
    some of its comma-separated parts ("tail=128" reads "conc=8,tail=128")."""
    if not ok_rows:
        return None
    if choice != "last":
        return next((_load_label(r) for r in ok_rows if names_point(_load_label(r), choice)), None)

    def size(r: ResultRow) -> tuple:
        x = _load_x(r)
        return (x is not None, x if x is not None else 0.0, r.started_at, _load_label(r))

    return _load_label(max(ok_rows, key=size))


def _status_text(row: ResultRow) -> str:
    if row.kind == "startup":
        return f"did not start: {shorten(row.error or 'no error recorded', ERROR_CHARS)}"
    if row.status == "not_applicable":
        return f"not applicable: {shorten(row.error or '', ERROR_CHARS)}".rstrip(": ")
    return f"{row.status}: {shorten(row.error or 'no error recorded', ERROR_CHARS)}"


def _first_failure(rows: list[ResultRow]) -> str | None:
    bad = sorted((r for r in rows if r.status not in PERF_OK), key=lambda r: (r.started_at, r.name))
    return _status_text(bad[0]) if bad else None


def _load_note(perf: list[ResultRow], label: str, choice: str) -> str:
    at = [r for r in perf if _load_label(r) == label]
    notes = []
    if any(r.status == "partial" for r in at):
        notes.append("partial")
    bad_at = [r for r in at if r.status not in PERF_OK]
    if bad_at:
        statuses = "/".join(sorted({r.status for r in bad_at}))
        notes.append(f"{len(bad_at)} of {len(at)} repeats {statuses}")
    if choice == "last":
        # Larger load points that produced nothing usable: the table reads a smaller one.
        x = max((_load_x(r) for r in at if _load_x(r) is not None), default=None)
        above = sorted(
            {(_load_x(r), _load_label(r), r.status) for r in perf
             if r.status not in PERF_OK and x is not None and (_load_x(r) or 0.0) > x}
        )
        notes.extend(f"{lbl} {status}" for _, lbl, status in above)
    return "; ".join(notes)


def _last_accuracy(rows: list[ResultRow]) -> ResultRow | None:
    return max((r for r in rows if r.kind == "accuracy"), key=lambda r: (r.started_at, r.name), default=None)


def _passed(rows: list[ResultRow]) -> bool:
    row = _last_accuracy(rows)
    return row is not None and row.status == "ok" and str((row.accuracy or {}).get("verdict", "")).lower() == "pass"


def _accuracy_text(rows: list[ResultRow]) -> str:
    row = _last_accuracy(rows)
    if row is None:
        started = [r for r in rows if r.kind == "startup"]
        return "not judged: did not start" if started else "not judged in this run (not ranked)"
    info = row.accuracy or {}
    if row.status == "not_applicable":
        reason = row.error or info.get("reason") or info.get("summary") or ""
        return f"not applicable: {shorten(reason, ACCURACY_SUMMARY_CHARS)}".rstrip(": ")
    verdict = str(info.get("verdict", "")).lower()
    lossless = info.get("lossless")
    if verdict == "pass" and isinstance(lossless, dict) and lossless.get("verdict") == "not_checked":
        return "pass (reference only: lossless not checked, the spec has no off_switch)"
    if verdict == "pass":
        return "pass"
    if verdict == "fail":
        summary = info.get("summary") or row.error or "no summary"
        return f"FAIL: {shorten(summary, ACCURACY_SUMMARY_CHARS)}"
    return _status_text(row)


def _entry(stack: str, run_id: str, rows: list[ResultRow], section: Section) -> StackEntry:
    board = section.board
    perf = [r for r in rows if r.kind == "performance"]
    ok = [r for r in perf if r.status in PERF_OK]
    label = _pick_label(ok, board.load_point)
    at = [r for r in ok if _load_label(r) == label]
    if label is None:
        named = [r for r in perf if names_point(_load_label(r), board.load_point)]
        failure = _first_failure(named or perf or rows)
        note = ""
    else:
        failure = None
        note = _load_note(perf, label, board.load_point)
    return StackEntry(
        stack=stack,
        run_id=run_id,
        rows=tuple(rows),
        load_label=label,
        load_note=note,
        values={k: _median(at, k) for k in section.keys},
        failure=failure,
        accuracy=_accuracy_text(rows),
        passed=_passed(rows),
    )


def current_run(section: Section, order: dict[str, tuple[str, str]]) -> str | None:
    """The run a table shows: the latest with rows for this section."""
    return max({r.run_id for r in section.rows}, key=lambda run: order[run], default=None)


def _entries(section: Section, order: dict[str, tuple[str, str]]) -> list[StackEntry]:
    """One entry per stack of the section's current run, ranked."""
    run_id = current_run(section, order)
    by_stack: dict[str, list[ResultRow]] = {}
    for row in section.rows:
        if row.run_id == run_id:
            by_stack.setdefault(row.stack, []).append(row)
    entries = [_entry(stack, run_id, rows, section) for stack, rows in sorted(by_stack.items())]
    return _ranked(entries, section.board)


def _ranked(entries: list[StackEntry], board: LeaderboardSpec) -> list[StackEntry]:
    """Stacks that passed, best primary value first, numbered; the others after, by name, unranked."""
    sign = -1.0 if board.direction == "higher" else 1.0
    scored = [e for e in entries if e.passed and e.values.get(board.primary) is not None]
    rest = [e for e in entries if e not in scored]
    scored.sort(key=lambda e: (sign * e.values[board.primary], e.stack))
    return [replace(e, rank=i + 1) for i, e in enumerate(scored)] + sorted(rest, key=lambda e: e.stack)


# --------------------------------------------------------------------------- ratios


def _ratio(stack_value: float | None, base_value: float | None, direction: str) -> float | None:
    """Direction-aware, so that a ratio above 1 always means the stack is better."""
    if stack_value is None or base_value is None or stack_value == 0 or base_value == 0:
        return None
    return stack_value / base_value if direction == "higher" else base_value / stack_value


def _baseline_value(section: Section, baseline: StackEntry, entry: StackEntry) -> float | None:
    """The baseline's primary value at the entry's load point, from rows on the entry's machine;
    None when it did not pass its oracle or was not measured there."""
    if not baseline.passed:
        return None
    machines = {machine_key(r) for r in entry.rows if r.kind == "performance" and _load_label(r) == entry.load_label}
    rows = [
        r for r in baseline.rows
        if r.kind == "performance" and r.status in PERF_OK and _load_label(r) == entry.load_label
        and machine_key(r) in machines
    ]
    return _median(rows, section.board.primary)


def _ratio_cell(entry: StackEntry, baseline: StackEntry, section: Section) -> str:
    value = entry.values.get(section.board.primary)
    if value is None or entry.load_label is None or not entry.passed:
        return DASH
    if entry.stack == baseline.stack:
        return format_ratio(1.0)
    base = _baseline_value(section, baseline, entry)
    return format_ratio(_ratio(value, base, section.board.direction))


# --------------------------------------------------------------------------- Markdown


def _table(section: Section, entries: list[StackEntry], baselines: list[StackEntry]) -> list[str]:
    arrow = "↑" if section.board.direction == "higher" else "↓"
    heads = ["#", "stack", "load point"]
    heads += [metric_label(k, section.board.labels) + (f" {arrow}" if k == section.board.primary else "")
              for k in section.keys]
    heads += [f"vs {b.stack}" for b in baselines] + ["accuracy"]
    lines = ["| " + " | ".join(heads) + " |",
             "|" + "|".join(["---:", "---", "---"] + ["---:"] * (len(heads) - 4) + ["---"]) + "|"]
    for e in entries:
        if e.failure is not None:
            numbers = [f"**{e.failure}**"] + [""] * (len(section.keys) - 1)
            load = DASH
        else:
            numbers = [format_value(e.values.get(k)) for k in section.keys]
            load = DASH if e.load_label is None else e.load_label + (f" ({e.load_note})" if e.load_note else "")
        ratios = [_ratio_cell(e, b, section) for b in baselines]
        cells = [DASH if e.rank is None else str(e.rank), f"`{e.stack}`", load, *numbers, *ratios, e.accuracy]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _fmt_loadavg(value: object) -> str | None:
    if not isinstance(value, (list, tuple)) or not value:
        return None
    return " ".join(f"{float(v):.2f}" for v in value if isinstance(v, (int, float)))


def _machine_text(rows: list[ResultRow]) -> str:
    first = rows[0].machine or {}
    parts = []
    if first.get("cpu"):
        online = first.get("cores_online")
        of = f" of {online}" if online and online != first.get("cores") else ""  # a pinned run: taskset, a cpuset
        cores = f" ({first['cores']}{of} cores)" if first.get("cores") else ""
        isa = f", {'/'.join(first['isa'])}" if first.get("isa") else ""
        parts.append(f"{first['cpu']}{cores}{isa}")
    before = _fmt_loadavg(first.get("loadavg_before"))
    after = next((a for r in reversed(rows) if (a := _fmt_loadavg((r.machine or {}).get("loadavg_after")))), None)
    if before or after:
        parts.append(f"load average {before or '?'} → {after or '?'}")
    gpus = sorted({str(g) for r in rows if (g := (r.machine or {}).get("gpu"))})
    parts.append("GPU: " + ", ".join(gpus) if gpus else "no GPU")
    return "; ".join(parts) if first else "machine not recorded"


def _commit_text(rows: list[ResultRow]) -> str:
    commits = sorted(
        {f"`{str(c['sha'])[:12]}`" + (" (dirty)" if c.get("dirty") else "") for r in rows if (c := r.commit or {}).get("sha")}
    )
    return "commit " + ", ".join(commits) if commits else "commit not recorded"


def _provenance(section: Section, entries: list[StackEntry], order: dict[str, tuple[str, str]]) -> list[str]:
    run_id = current_run(section, order)
    if run_id is None:
        return []
    rows = sorted((r for r in section.rows if r.run_id == run_id), key=lambda r: (r.started_at, r.stack, r.name))
    stacks = ", ".join(f"`{e.stack}`" for e in sorted(entries, key=lambda e: e.stack))
    lines = [f"- Run `{run_id}` ({stacks}): {_machine_text(rows)}; {_commit_text(rows)}."]
    if any(r.salt is None and r.schema_version >= SALTED_SCHEMA for r in rows):
        lines.append("- Prompts not salted in this run (`--salt none`): a stack could have answered from a table.")
    machines = {machine_key(r) for r in rows}
    if len(machines) > 1:
        lines.append(f"- This run's rows come from {len(machines)} machines: a ratio compares rows of one machine only.")
    earlier = sorted({r.run_id for r in section.rows} - {run_id}, key=lambda run: order[run], reverse=True)
    if earlier:
        listed = [f"`{run}` ({_cpu_of(section, run)})" for run in earlier[:EARLIER_LISTED]]
        more = f" and {len(earlier) - EARLIER_LISTED} more" if len(earlier) > EARLIER_LISTED else ""
        lines.append("- Earlier runs, not shown (a table compares one run): " + ", ".join(listed) + more + ".")
    return lines


def _cpu_of(section: Section, run_id: str) -> str:
    cpus = sorted({str((r.machine or {}).get("cpu") or "machine not recorded") for r in section.rows if r.run_id == run_id})
    return ", ".join(cpus)


def _describe(section: Section) -> str:
    board = section.board
    better = "higher" if board.direction == "higher" else "lower"
    where = "the highest load point" if board.load_point == "last" else f"load point `{board.load_point}`"
    text = (f"Primary metric: {metric_label(board.primary, board.labels)} ({better} is better), read at {where}. Ranked (#): the "
            f"stacks whose oracle passed in this run; the others are listed with their reason, without ratios.")
    if not section.has_scenario:
        text += f" No scenario YAML names setting {section.setting}: default columns."
    return text


def _render_section(section: Section, order: dict[str, tuple[str, str]], baselines: frozenset[str]) -> list[str]:
    entries = _entries(section, order)
    present = sorted((e for e in entries if e.stack in baselines), key=lambda e: e.stack)
    plot = f"{PLOTS_DIR}/{section.slug}.png"
    return [
        f"## {section.heading}",
        "",
        _describe(section),
        "",
        *_table(section, entries, present),
        "",
        *_provenance(section, entries, order),
        f"- Plot: [{plot}]({plot})",
        "",
    ]


HEADER = f"""# Leaderboard

Generated from the result rows under `{RUNS_DIR}/` by `python -m harness leaderboard`; do not edit by hand.
One table per setting and profile (and per kind of CPU, where a setting was run on more than one), from the
latest run that scored it (the median over repeats); earlier runs are listed below it, never set beside it.
Only stacks whose oracle passed in that run are ranked. A `vs <baseline>` column compares the primary metric
with that baseline at the same load point on the same machine; above 1.00× is better whichever way the
metric runs, and {DASH} means there is no comparison (the baseline was not measured there or did not pass,
or the stack did not pass).
"""


def render_markdown(sections: list[Section], order: dict[str, tuple[str, str]], baselines: frozenset[str]) -> str:
    lines = [HEADER]
    if not sections:
        lines.append("No result rows yet: run a scenario to produce some, then run this command again.\n")
    for section in sections:
        lines.extend(_render_section(section, order, baselines))
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- plots


def _plotted(board: LeaderboardSpec) -> tuple[str, ...]:
    return tuple(dict.fromkeys((board.primary, *board.plot)))


def _plot_points(entry: StackEntry, section: Section) -> tuple[PlotPoint, ...]:
    ok = [r for r in entry.rows if r.kind == "performance" and r.status in PERF_OK]
    by_label: dict[str, list[ResultRow]] = {}
    for row in ok:
        by_label.setdefault(_load_label(row), []).append(row)
    points = sorted((
        PlotPoint(
            label=label,
            x=_load_x(rows[0], section.board.x),
            values=tuple(_median(rows, key) for key in _plotted(section.board)),
        )
        for label, rows in by_label.items()
    ), key=lambda p: (p.x is None, p.x or 0.0, p.label))
    if section.board.x is None and _mixed_loads(section.rows):  # in load order, drawn as categories
        points = [replace(p, x=None) for p in points]
    return tuple(points)


def _plot_spec(section: Section, order: dict[str, tuple[str, str]]) -> PlotSpec:
    series = tuple(
        PlotSeries(stack=e.stack, points=_plot_points(e, section))
        for e in sorted(_entries(section, order), key=lambda e: e.stack)
    )
    return PlotSpec(
        title=(f"{section.title} (setting {section.setting}, profile {section.profile})" if section.has_scenario
               else f"setting {section.setting}, profile {section.profile}")
        + (f", {section.machine}" if section.machine else ""),
        panels=tuple(metric_label(key, section.board.labels) for key in _plotted(section.board)),
        x_label=section.board.x or _x_label(section.rows),
        series=series,
    )


# --------------------------------------------------------------------------- entry point


def write_leaderboard(results_dir: Path, scenarios_dir: Path | list[Path], baselines: set[str] | None = None) -> Path:
    """Write results_dir/LEADERBOARD.md and results_dir/plots/<setting>-<profile>.png; return the Markdown path.

    scenarios_dir: the folder (or folders) of the scenario YAMLs whose tables are described.

    baselines: stack names compared against in addition to BASELINES and the stacks whose spec ships
    under baselines/ (the `--baseline` option).
    """
    results_dir = Path(results_dir)
    rows = read_rows(results_dir)
    order = _run_order(rows)
    dirs = scenarios_dir if isinstance(scenarios_dir, list) else [scenarios_dir]
    sections = _sections(rows, [s for d in dirs for s in find_scenarios(Path(d))])
    # Any stack launched from a spec shipped under baselines/ is a baseline too (vllm-eager, ...).
    shipped = {r.stack for r in rows if str((r.stack_info or {}).get("spec") or "").startswith("baselines/")}
    # A stack with one optimisation off (`--stack NAME.FEATURE-off`) is what that optimisation is
    # measured against (setting C's goal is over the stack with its cache off).
    switched_off = {r.stack for r in rows if OFF_VARIANT.fullmatch(r.stack)}
    all_baselines = BASELINES | frozenset(baselines or ()) | frozenset(shipped) | frozenset(switched_off)
    plots = {results_dir / PLOTS_DIR / f"{section.slug}.png" for section in sections}
    for section in sections:
        write_plot(results_dir / PLOTS_DIR / f"{section.slug}.png", _plot_spec(section, order))
    for stale in set((results_dir / PLOTS_DIR).glob("*.png")) - plots:  # a table that is gone, or split by CPU
        stale.unlink()
    path = results_dir / LEADERBOARD_FILE
    atomic_write_text(path, render_markdown(sections, order, all_baselines))
    return path
