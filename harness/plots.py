"""Leaderboard plots: one PNG per (setting, profile), a panel per metric the scenario's YAML names
(`leaderboard.plot`, the primary first) drawn per load point; a bar per stack where all were
measured at one load point."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

# The object-oriented API with the Agg canvas, not pyplot: no global backend switch, no figure registry.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from harness.atomic import atomic_write_bytes

LOG_X_SPAN = 4.0  # a log x axis once the largest load is more than this many times the smallest


@dataclass(frozen=True)
class PlotPoint:
    label: str  # the load point's label, e.g. "rate=0.5"
    x: float | None  # request_rate or concurrency; None when the point has neither
    values: tuple[float | None, ...]  # one per panel of the plot


@dataclass(frozen=True)
class PlotSeries:
    stack: str
    points: tuple[PlotPoint, ...]


@dataclass(frozen=True)
class PlotSpec:
    title: str
    panels: tuple[str, ...]  # each panel's axis label, the primary metric's first
    x_label: str  # "request rate (req/s)", "concurrency", ...
    series: tuple[PlotSeries, ...]


def _numeric_x(series: tuple[PlotSeries, ...]) -> bool:
    xs = [p.x for s in series for p in s.points]
    return bool(xs) and all(x is not None and math.isfinite(x) for x in xs)


def _categories(series: tuple[PlotSeries, ...]) -> list[str]:
    """Labels in first-seen order, for load points that have no numeric load."""
    seen: list[str] = []
    for s in series:
        for p in s.points:
            if p.label not in seen:
                seen.append(p.label)
    return seen


def single_point(spec: PlotSpec) -> bool:
    """Every stack measured at the same one load point (a single concurrency, say): bars, not lines."""
    return len(_categories(spec.series)) == 1


def _draw_bars(ax, spec: PlotSpec, panel: int, label: str) -> None:
    bars = sorted(((s.stack, s.points[0].values[panel]) for s in spec.series
                   if s.points and s.points[0].values[panel] is not None), key=lambda b: b[1])
    if not bars:
        ax.text(0.5, 0.5, "no measured load points", ha="center", va="center", transform=ax.transAxes)
        return
    color = {s.stack: f"C{i}" for i, s in enumerate(spec.series)}  # a stack keeps its colour in both panels
    ax.barh(range(len(bars)), [v for _, v in bars], color=[color[name] for name, _ in bars])
    ax.set_yticks(range(len(bars)), [name for name, _ in bars])
    for i, (_, v) in enumerate(bars):
        ax.text(v, i, f" {v:,.4g}", va="center", fontsize="small")
    ax.set_xlabel(f"{label} at {_categories(spec.series)[0]}")
    ax.margins(x=0.15)
    ax.grid(True, axis="x", alpha=0.3)


def _draw(ax, spec: PlotSpec, panel: int, ylabel: str) -> None:
    if single_point(spec):
        _draw_bars(ax, spec, panel, ylabel)
        return
    numeric = _numeric_x(spec.series)
    cats = [] if numeric else _categories(spec.series)
    drawn = False
    for s in spec.series:
        pts = [p for p in s.points if p.values[panel] is not None]
        if not pts:
            continue
        xs = [p.x if numeric else cats.index(p.label) for p in pts]
        ax.plot(xs, [p.values[panel] for p in pts], marker="o", label=s.stack)
        drawn = True
    if numeric:
        xs = [p.x for s in spec.series for p in s.points if p.x and p.x > 0]
        if xs and max(xs) / min(xs) > LOG_X_SPAN:
            ax.set_xscale("log")
            # Ticks at the measured loads read better than powers of ten with minor labels.
            ticks = sorted(set(xs))
            ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(spec.x_label)
    else:
        ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
        ax.set_xlabel("load point")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no measured load points", ha="center", va="center", transform=ax.transAxes)


def _drawn_panels(spec: PlotSpec) -> list[int]:
    """The primary's panel always; another only where some stack has a value for it."""
    return [i for i in range(len(spec.panels))
            if i == 0 or any(p.values[i] is not None for s in spec.series for p in s.points)]


def render_png(spec: PlotSpec) -> bytes:
    panels = _drawn_panels(spec)
    fig = Figure(figsize=(1.5 + 5 * len(panels), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        _draw(ax, spec, panel, spec.panels[panel])
    fig.suptitle(spec.title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_plot(path: Path, spec: PlotSpec) -> Path:
    """Render spec to a PNG at path (atomically); leaves the file alone when the bytes are unchanged."""
    path = Path(path)
    data = render_png(spec)
    if not (path.exists() and path.read_bytes() == data):
        atomic_write_bytes(path, data)
    return path
