"""The leaderboard from synthetic rows: which rows it reads, ratios, verdicts, plots, determinism."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.leaderboard import metric_label, write_leaderboard
from harness.row import ResultRow, read_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SCENARIO_A = """\
setting: A
name: standard_serving
title: "A: standard serving"
needs: [completions]
leaderboard:
  primary: output_throughput
  direction: higher
  columns: [output_throughput, median_ttft_ms, p99_ttft_ms]
  load_point: last
profiles:
  tiny: {model: m}
  paper: {model: m}
"""

SCENARIO_D = """\
setting: D
name: streaming_asr
title: "D: streaming speech recognition"
needs: [audio_stream]
leaderboard:
  primary: median_ttft_ms
  direction: lower
  columns: [median_ttft_ms, p99_ttft_ms]
  load_point: last
profiles:
  tiny: {model: m}
  paper: {model: m}
"""

MACHINE = {"cpu": "Test CPU 9000", "cores": 8, "loadavg_before": [0.1, 0.2, 0.3], "loadavg_after": [1.0, 1.1, 1.2], "gpu": None}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "standard_serving.yaml").write_text(SCENARIO_A)
    (scenarios / "streaming_asr.yaml").write_text(SCENARIO_D)
    return tmp_path / "results", scenarios


def perf(results: Path, stack: str, run_id: str, rate: float, metrics: dict, *, setting: str = "A",
         repeat: int = 0, status: str = "ok", error: str | None = None, started_at: str = "2026-01-01T00:00:00Z",
         judged: bool = True, machine: dict | None = None, salt: str | None = "5a17ed00") -> None:
    ResultRow(
        run_id=run_id, stack=stack, setting=setting, scenario="s", profile="tiny", kind="performance",
        status=status, load_point={"label": f"rate={rate}", "request_rate": rate}, repeat=repeat,
        metrics=metrics, error=error, machine=machine or MACHINE, commit={"sha": "abcdef1234567890", "dirty": False},
        started_at=started_at, salt=salt,
    ).write(results)
    if judged:  # the stack passed its oracle in this run, unless a test writes another verdict
        row = ResultRow(run_id=run_id, stack=stack, setting=setting, scenario="s", profile="tiny", kind="accuracy",
                        status="ok", accuracy={"verdict": "pass"}, machine=machine or MACHINE, started_at=started_at,
                        salt=salt)
        if not row.path_in(results).exists():
            row.write(results)


def accuracy(results: Path, stack: str, run_id: str, status: str, info: dict | None, error: str | None = None,
             started_at: str = "2026-01-01T00:00:00Z") -> None:
    ResultRow(
        run_id=run_id, stack=stack, setting="A", scenario="s", profile="tiny", kind="accuracy",
        status=status, accuracy=info, error=error, machine=MACHINE, started_at=started_at,
    ).write(results)


def table_row(md: str, stack: str, heading: str = "## A:") -> list[str]:
    """The cells of stack's row in the first table under a heading starting with `heading`."""
    section = md[md.index(heading):]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    for line in section.splitlines():
        if f" | `{stack}` | " in line:
            return [c.strip() for c in line.strip("|").split(" | ")]
    raise AssertionError(f"no row for {stack} in:\n{section}")


def header(md: str, heading: str = "## A:") -> list[str]:
    section = md[md.index(heading):]
    line = next(l for l in section.splitlines() if l.startswith("| # | stack"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def cell(md: str, stack: str, column: str, heading: str = "## A:") -> str:
    return table_row(md, stack, heading)[header(md, heading).index(column)]


def test_higher_is_better_ratio(dirs):
    results, scenarios = dirs
    perf(results, "vllm", "run1", 1.0, {"output_throughput": 100.0, "median_ttft_ms": 50.0})
    perf(results, "mine", "run1", 1.0, {"output_throughput": 150.0, "median_ttft_ms": 40.0})
    md = write_leaderboard(results, scenarios).read_text()
    assert cell(md, "mine", "vs vllm") == "1.50×"
    assert cell(md, "vllm", "vs vllm") == "1.00×"
    assert cell(md, "mine", "output tok/s ↑") == "150.0"
    assert cell(md, "mine", "TTFT p50 (ms)") == "40.00"
    assert cell(md, "mine", "TTFT p99 (ms)") == "—"  # missing key
    # ranked: best first
    assert md.index("| `mine` |") < md.index("| `vllm` |")


def test_lower_is_better_ratio(dirs):
    results, scenarios = dirs
    perf(results, "vllm", "run1", 1.0, {"median_ttft_ms": 200.0}, setting="D")
    perf(results, "mine", "run1", 1.0, {"median_ttft_ms": 100.0}, setting="D")
    md = write_leaderboard(results, scenarios).read_text()
    heading = "## D:"
    assert cell(md, "mine", "vs vllm", heading) == "2.00×"
    assert cell(md, "vllm", "vs vllm", heading) == "1.00×"
    assert md.index("| `mine` |") < md.index("| `vllm` |")


def test_extra_baseline_argument(dirs):
    results, scenarios = dirs
    perf(results, "old-mine", "run1", 1.0, {"output_throughput": 80.0})
    perf(results, "mine", "run1", 1.0, {"output_throughput": 120.0})
    md = write_leaderboard(results, scenarios, baselines={"old-mine"}).read_text()
    assert cell(md, "mine", "vs old-mine") == "1.50×"
    md = write_leaderboard(results, scenarios).read_text()
    assert "vs old-mine" not in md


def test_a_table_shows_one_run_and_lists_the_earlier_ones(dirs):
    results, scenarios = dirs
    perf(results, "vllm", "run1", 1.0, {"output_throughput": 100.0}, started_at="2026-01-01T00:00:00Z")
    perf(results, "mine", "run2", 1.0, {"output_throughput": 150.0}, started_at="2026-01-02T00:00:00Z")
    md = write_leaderboard(results, scenarios).read_text()
    assert "| `vllm` |" not in md and cell(md, "mine", "#") == "1"  # vllm's earlier row is not set beside it
    assert "Run `run2` (`mine`)" in md and "Earlier runs, not shown (a table compares one run): `run1`" in md


def test_ratio_only_against_a_baseline_on_the_same_machine(dirs):
    results, scenarios = dirs
    other = {**MACHINE, "cpu": "Other CPU 1"}
    perf(results, "vllm", "run1", 1.0, {"output_throughput": 100.0}, machine=other)
    perf(results, "mine", "run1", 1.0, {"output_throughput": 300.0})
    perf(results, "vllm", "run1", 2.0, {"output_throughput": 100.0})
    perf(results, "mine", "run1", 2.0, {"output_throughput": 300.0})
    md = write_leaderboard(results, scenarios).read_text()
    assert cell(md, "mine", "vs vllm") == "3.00×"  # at rate=2.0, both on MACHINE
    assert "rows come from 2 machines" in md
    results2 = results.parent / "results2"
    perf(results2, "vllm", "run1", 1.0, {"output_throughput": 100.0}, machine=other)
    perf(results2, "mine", "run1", 1.0, {"output_throughput": 300.0})
    md = write_leaderboard(results2, scenarios).read_text()
    assert cell(md, "mine", "vs vllm") == "—"
    # one CPU name, two instruction sets (an AVX2-only and an AVX-512 "AMD EPYC"): not one machine
    results3 = results.parent / "results3"
    perf(results3, "vllm", "run1", 1.0, {"output_throughput": 100.0}, machine={**MACHINE, "isa": ["avx2"]})
    perf(results3, "mine", "run1", 1.0, {"output_throughput": 300.0}, machine={**MACHINE, "isa": ["avx2", "avx512f"]})
    assert cell(write_leaderboard(results3, scenarios).read_text(), "mine", "vs vllm") == "—"


def test_only_stacks_that_passed_are_ranked_and_compared(dirs):
    results, scenarios = dirs
    perf(results, "vllm", "run1", 1.0, {"output_throughput": 100.0})
    perf(results, "fast-wrong", "run1", 1.0, {"output_throughput": 900.0})
    accuracy(results, "fast-wrong", "run1", "failed", {"verdict": "fail", "summary": "3 prompts fail"})
    perf(results, "unjudged", "run1", 1.0, {"output_throughput": 800.0}, judged=False)
    perf(results, "mine", "run1", 1.0, {"output_throughput": 150.0})
    md = write_leaderboard(results, scenarios).read_text()
    assert [cell(md, s, "#") for s in ("mine", "vllm", "fast-wrong", "unjudged")] == ["1", "2", "—", "—"]
    assert cell(md, "fast-wrong", "vs vllm") == "—" and cell(md, "unjudged", "vs vllm") == "—"
    assert cell(md, "fast-wrong", "accuracy").startswith("FAIL") and "not judged" in cell(md, "unjudged", "accuracy")
    assert md.index("| `mine` |") < md.index("| `vllm` |") < md.index("| `fast-wrong` |")
    # a baseline that failed its oracle gives no ratio either
    accuracy(results, "vllm", "run1", "failed", {"verdict": "fail", "summary": "1 prompt fails"})
    md = write_leaderboard(results, scenarios).read_text()
    assert cell(md, "mine", "vs vllm") == "—" and cell(md, "mine", "#") == "1"


def test_a_stack_that_did_not_start_is_listed_with_its_reason(dirs):
    results, scenarios = dirs
    perf(results, "vllm", "run1", 1.0, {"output_throughput": 100.0})
    ResultRow(run_id="run1", stack="broken", setting="A", scenario="s", profile="tiny", kind="startup", status="failed",
              error="stack broken exited with code 4", machine=MACHINE, started_at="2026-01-01T00:00:00Z").write(results)
    md = write_leaderboard(results, scenarios).read_text()
    assert "did not start: stack broken exited with code 4" in cell(md, "broken", "load point") + cell(md, "broken", "output tok/s ↑")
    assert cell(md, "broken", "#") == "—" and cell(md, "broken", "accuracy") == "not judged: did not start"


def test_an_unreadable_row_file_is_skipped_with_a_warning(dirs, capsys):
    results, scenarios = dirs
    perf(results, "vllm", "run1", 1.0, {"output_throughput": 100.0})
    bad = results / "runs" / "run1" / "A-tiny" / "vllm" / "perf-truncated.json"
    bad.write_text('{"run_id": "run1", "stack"')
    md = write_leaderboard(results, scenarios).read_text()
    assert cell(md, "vllm", "#") == "1"
    assert "skipped" in capsys.readouterr().err and "perf-truncated.json" in bad.name


def test_median_over_repeats(dirs):
    results, scenarios = dirs
    for repeat, value in enumerate([10.0, 30.0, 20.0]):
        perf(results, "mine", "run1", 1.0, {"output_throughput": value, "median_ttft_ms": value * 2}, repeat=repeat)
    md = write_leaderboard(results, scenarios).read_text()
    assert cell(md, "mine", "output tok/s ↑") == "20.00"
    assert cell(md, "mine", "TTFT p50 (ms)") == "40.00"


def test_last_load_point_is_highest_rate(dirs):
    results, scenarios = dirs
    # written so that neither file order nor label order gives the answer
    perf(results, "mine", "run1", 4.0, {"output_throughput": 400.0}, started_at="2026-01-01T00:00:00Z")
    perf(results, "mine", "run1", 16.0, {"output_throughput": 1600.0}, started_at="2026-01-01T00:01:00Z")
    perf(results, "mine", "run1", 8.0, {"output_throughput": 800.0}, started_at="2026-01-01T00:02:00Z")
    md = write_leaderboard(results, scenarios).read_text()
    assert cell(md, "mine", "output tok/s ↑") == "1,600.0"
    assert cell(md, "mine", "load point") == "rate=16.0"


def test_failed_higher_load_point_is_noted(dirs):
    results, scenarios = dirs
    perf(results, "mine", "run1", 1.0, {"output_throughput": 50.0})
    perf(results, "mine", "run1", 2.0, {}, status="crashed", error="boom")
    md = write_leaderboard(results, scenarios).read_text()
    assert cell(md, "mine", "load point") == "rate=1.0 (rate=2.0 crashed)"
    assert cell(md, "mine", "output tok/s ↑") == "50.00"


def test_accuracy_verdicts(dirs):
    results, scenarios = dirs
    long = "token 17 differs outside top-5: " + "x" * 100
    accuracy(results, "good", "run1", "ok", {"verdict": "pass", "summary": "16/16 match"})
    accuracy(results, "bad", "run1", "failed", {"verdict": "fail", "summary": long})
    accuracy(results, "na", "run1", "not_applicable", None, error="stack lacks logprobs")
    accuracy(results, "unchecked", "run1", "ok", {"verdict": "pass", "summary": "lossless not checked",
                                                  "lossless": {"verdict": "not_checked"}})
    perf(results, "none", "run1", 1.0, {"output_throughput": 1.0}, judged=False)
    md = write_leaderboard(results, scenarios).read_text()
    assert cell(md, "good", "accuracy") == "pass"
    assert cell(md, "unchecked", "accuracy").startswith("pass (reference only: lossless not checked")
    bad = cell(md, "bad", "accuracy")
    assert bad.startswith("FAIL: token 17 differs") and len(bad) <= len("FAIL: ") + 60
    assert cell(md, "na", "accuracy") == "not applicable: stack lacks logprobs"
    assert cell(md, "none", "accuracy") == "not judged in this run (not ranked)"
    # an accuracy-only stack has no numbers
    assert cell(md, "good", "output tok/s ↑") == "—"


def test_crashed_and_not_applicable_stacks(dirs):
    results, scenarios = dirs
    perf(results, "vllm", "run1", 1.0, {"output_throughput": 100.0})
    perf(results, "broken", "run1", 1.0, {}, status="crashed", error="Segmentation fault | core dumped")
    perf(results, "nope", "run1", 1.0, {}, status="not_applicable", error="does not support logprobs")
    md = write_leaderboard(results, scenarios).read_text()
    row = table_row(md, "broken")
    assert "**crashed: Segmentation fault \\| core dumped**" in row
    assert cell(md, "broken", "vs vllm") == "—"
    assert "**not applicable: does not support logprobs**" in table_row(md, "nope")
    # failing stacks rank after the ones with numbers
    assert md.index("| `vllm` |") < md.index("| `broken` |")


def test_plot_is_a_png_and_linked(dirs):
    results, scenarios = dirs
    for rate, value in [(0.25, 20.0), (0.5, 40.0), (1.0, 70.0)]:
        perf(results, "vllm", "run1", rate, {"output_throughput": value, "median_ttft_ms": 30.0})
        perf(results, "mine", "run1", rate, {"output_throughput": value * 1.2, "median_ttft_ms": 25.0})
    md = write_leaderboard(results, scenarios).read_text()
    png = results / "plots" / "A-tiny.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "[plots/A-tiny.png](plots/A-tiny.png)" in md


def test_one_load_point_is_drawn_as_bars():
    from harness.plots import PlotPoint, PlotSeries, PlotSpec, render_png, single_point

    one = PlotSpec("B", ("median tok/s", "TTFT p50 (ms)"), "concurrency", tuple(
        PlotSeries(name, (PlotPoint("conc=1", 1.0, (value, 90.0)),)) for name, value in [("engine", 226.0), ("vllm", 32.4)]))
    assert single_point(one) and render_png(one)[:8] == PNG_MAGIC
    two = PlotSpec("A", ("output tok/s",), "request rate", (PlotSeries("vllm", (PlotPoint("rate=1", 1.0, (5.0,)),
                                                                               PlotPoint("rate=2", 2.0, (9.0,)))),))
    assert not single_point(two) and render_png(two)[:8] == PNG_MAGIC


def test_plot_panels_are_the_ones_the_scenario_names(dirs):
    from harness.leaderboard import _plot_spec, _run_order, _sections
    from harness.scenario import LeaderboardSpec, ScenarioSpec

    results, _ = dirs
    perf(results, "mine", "run1", 1.0, {"output_throughput": 2.0, "median_ttft_ms": 9.0, "p99_e2el_ms": 30.0})
    board = LeaderboardSpec(primary="output_throughput", direction="higher", columns=("output_throughput",),
                            plot=("output_throughput", "p99_e2el_ms"))
    spec = ScenarioSpec(setting="A", name="a", title="A", needs={}, leaderboard=board, profiles={"tiny": {}})
    rows = read_rows(results)
    section = _sections(rows, [spec])[0]
    plot = _plot_spec(section, _run_order(rows))
    assert plot.panels == ("output tok/s", "E2E latency p99 (ms)")
    assert plot.series[0].points[0].values == (2.0, 30.0)


def test_unknown_setting_and_sections_order(dirs):
    results, scenarios = dirs
    perf(results, "mine", "run1", 1.0, {"output_throughput": 1.0}, setting="Z")
    perf(results, "mine", "run1", 1.0, {"median_ttft_ms": 1.0}, setting="D")
    perf(results, "mine", "run1", 1.0, {"output_throughput": 1.0}, setting="A")
    md = write_leaderboard(results, scenarios).read_text()
    assert md.index("## A: standard serving") < md.index("## D: streaming") < md.index("## Z — profile")
    assert (results / "plots" / "Z-tiny.png").exists()


def test_machine_and_commit_line(dirs):
    results, scenarios = dirs
    perf(results, "mine", "run1", 1.0, {"output_throughput": 1.0})
    md = write_leaderboard(results, scenarios).read_text()
    assert "Test CPU 9000 (8 cores)" in md
    assert "load average 0.10 0.20 0.30 → 1.00 1.10 1.20" in md
    assert "`abcdef123456`" in md


def test_a_pinned_run_says_how_many_of_the_cores_it_had(dirs):
    results, scenarios = dirs
    perf(results, "mine", "run1", 1.0, {"output_throughput": 1.0}, machine={**MACHINE, "cores": 2, "cores_online": 16})
    assert "Test CPU 9000 (2 of 16 cores)" in write_leaderboard(results, scenarios).read_text()


def test_each_kind_of_cpu_keeps_its_own_table_and_plot(dirs):
    """A later run on another CPU family must not hide the last one on this family (the goals
    are per family); one family alone keeps the plain heading and plot name."""
    results, scenarios = dirs
    xeon = {**MACHINE, "cpu": "Intel(R) Xeon(R) Processor"}
    perf(results, "mine", "run1", 1.0, {"output_throughput": 300.0})
    perf(results, "vllm", "run1", 1.0, {"output_throughput": 100.0})
    md = write_leaderboard(results, scenarios).read_text()
    assert "## A: standard serving — profile `tiny`\n" in md and (results / "plots" / "A-tiny.png").exists()
    perf(results, "mine", "run2", 1.0, {"output_throughput": 500.0}, machine=xeon, started_at="2026-01-02T00:00:00Z")
    perf(results, "vllm", "run2", 1.0, {"output_throughput": 250.0}, machine=xeon, started_at="2026-01-02T00:00:00Z")
    md = write_leaderboard(results, scenarios).read_text()
    heading = "## A: standard serving — profile `tiny` — "
    xeon, other = heading + "Intel Xeon Processor", heading + "Test CPU 9000"
    assert cell(md, "mine", "vs vllm", xeon) == "2.00×" and cell(md, "mine", "vs vllm", other) == "3.00×"
    assert "Run `run2`" in md.split(xeon)[1] and "Run `run1`" in md.split(other)[1].split("## A:")[0]
    assert "Earlier runs" not in md  # each run is the latest of its own family
    plots = sorted(p.name for p in (results / "plots").glob("*.png"))
    assert plots == ["A-tiny-Intel_Xeon_Processor.png", "A-tiny-Test_CPU_9000.png"]  # the unsplit plot is gone


def test_a_stack_with_an_optimisation_off_is_a_baseline(dirs):
    results, scenarios = dirs
    perf(results, "mine", "run1", 1.0, {"output_throughput": 400.0})
    perf(results, "mine.prefix_caching-off", "run1", 1.0, {"output_throughput": 100.0})
    md = write_leaderboard(results, scenarios).read_text()
    assert cell(md, "mine", "vs mine.prefix_caching-off") == "4.00×"


def test_no_rows(dirs):
    results, scenarios = dirs
    path = write_leaderboard(results, scenarios)
    assert path == results / "LEADERBOARD.md"
    assert "No result rows yet" in path.read_text()


def test_byte_identical_rerun(dirs):
    results, scenarios = dirs
    for repeat in range(2):
        perf(results, "vllm", "run1", 0.5, {"output_throughput": 40.0 + repeat, "median_ttft_ms": 30.0}, repeat=repeat)
        perf(results, "mine", "run1", 0.5, {"output_throughput": 50.0 + repeat, "median_ttft_ms": 20.0}, repeat=repeat)
    accuracy(results, "mine", "run1", "ok", {"verdict": "pass"})
    path = write_leaderboard(results, scenarios)
    first_md, first_png = path.read_bytes(), (results / "plots" / "A-tiny.png").read_bytes()
    write_leaderboard(results, scenarios)
    assert path.read_bytes() == first_md
    assert (results / "plots" / "A-tiny.png").read_bytes() == first_png
    assert not [p for p in results.rglob(".*.tmp")]


@pytest.mark.parametrize(
    "key,label",
    [("output_throughput", "output tok/s"), ("median_ttft_ms", "TTFT p50 (ms)"),
     ("p99_tpot_ms", "TPOT p99 (ms)"), ("mean_e2el_ms", "E2E latency mean (ms)"), ("weird_key", "weird key"), ("median_token_gap_ms", "token gap p50 (ms)")],
)
def test_metric_labels(key, label):
    assert metric_label(key) == label


def test_a_run_with_unsalted_prompts_says_so(dirs):
    results, scenarios = dirs
    perf(results, "mine", "run1", 1.0, {"output_throughput": 1.0})
    assert "not salted" not in write_leaderboard(results, scenarios).read_text()
    perf(results, "mine", "run2", 1.0, {"output_throughput": 1.0}, salt=None, started_at="2026-01-02T00:00:00Z")
    assert "Prompts not salted in this run" in write_leaderboard(results, scenarios).read_text()


def test_points_sized_by_rate_and_by_concurrency_are_drawn_as_categories_in_load_order(dirs):
    """conc=1 beside rate=0.5 on one numeric axis would read as a request rate of 1 (setting F)."""
    from harness.leaderboard import _plot_spec, _run_order, _sections
    from harness.scenario import LeaderboardSpec, ScenarioSpec

    results, _ = dirs
    for rate in (8.0, 0.5):
        perf(results, "mine", "run1", rate, {"output_throughput": rate})
    ResultRow(run_id="run1", stack="mine", setting="A", scenario="s", profile="tiny", kind="performance", status="ok",
              load_point={"label": "conc=1", "request_rate": None, "concurrency": 1}, repeat=0,
              metrics={"output_throughput": 1.0}, machine=MACHINE, started_at="2026-01-01T00:00:00Z",
              salt="5a17ed00").write(results)
    board = LeaderboardSpec(primary="output_throughput", direction="higher", columns=("output_throughput",))
    spec = ScenarioSpec(setting="A", name="a", title="A", needs={}, leaderboard=board, profiles={"tiny": {}})
    rows = read_rows(results)
    points = _plot_spec(_sections(rows, [spec])[0], _run_order(rows)).series[0].points
    assert [p.label for p in points] == ["rate=0.5", "conc=1", "rate=8.0"]  # by load, not by label
    assert all(p.x is None for p in points)


def test_the_command_on_a_folder_without_runs_is_one_line_and_writes_nothing(tmp_path, capsys):
    from harness.__main__ import main

    missing = tmp_path / "not-results"
    assert main(["leaderboard", "--results-dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: no result rows under {missing} (it has no runs/ folder)"
    assert not missing.exists()
