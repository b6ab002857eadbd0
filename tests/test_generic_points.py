"""Generic harness pieces a setting uses without the harness naming it: a load point's own keys,
a stack with one of its optimisations switched off by name, metrics that read the cell's
counters, token-id prompts, prompt-side usage counts, a leaderboard read at part of a label and
plotted along a point key, and the agent's starting stack named by the setting."""
from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.generation import Prompt
from harness.leaderboard import _load_x, _pick_label
from harness.loadgen import LoadPoint
from harness.metrics import summarize
from harness.records import Event, RequestRecord
from harness.reference import input_ids
from harness.row import ResultRow
from harness.stack import resolve_stack
from harness.transports.openai_sse import take_usage


def test_a_points_own_keys_go_to_its_label_and_row():
    point = LoadPoint(num_prompts=8, concurrency=8, params={"tail": 129})
    assert point.label == "conc=8,tail=129"
    assert point.describe()["tail"] == 129 and point.describe()["concurrency"] == 8
    assert LoadPoint(num_prompts=1, request_rate=2.0).label == "rate=2.0"


def test_a_stack_with_its_optimisation_off_by_name(tmp_path):
    spec = resolve_stack("engine-c.prefix_caching-off")
    assert spec.name == "engine-c.prefix_caching-off" and spec.command[-1] == "--no-prefix-cache"
    assert "prefix_caching" not in spec.supports and not spec.off
    with pytest.raises(HarnessError, match="no off_switch for 'speed'"):
        resolve_stack("engine-c.speed-off")
    with pytest.raises(HarnessError, match="unknown stack"):
        resolve_stack("no-such-stack.prefix_caching-off")


def test_a_metric_function_may_read_the_cells_counters():
    rec = RequestRecord(index=0, sent_at=0.0, events=[Event(0.1, 1, "a")], final="a", finish_reason="length")
    seen = {}

    def with_counters(records, moved):
        seen["moved"] = moved
        return {"hits": moved["h"]}

    metrics = summarize([rec], extra={"hits": with_counters, "n": lambda records: len(records)}, counters={"h": 5.0})
    assert metrics["hits"] == 5.0 and metrics["n"] == 1 and seen["moved"] == {"h": 5.0}


def test_token_id_prompts_reach_the_reference_as_they_are():
    prompt = Prompt(id="p", text="<3 ids>", chat=False, max_tokens=4, ids=(5, 6, 7))
    assert input_ids(tokenizer=None, prompt=prompt) == [5, 6, 7]
    assert prompt.reference_key()["ids"] == [5, 6, 7] and prompt.without_extra().ids == (5, 6, 7)
    with pytest.raises(ValueError, match="completions"):
        Prompt(id="p", text="", chat=True, max_tokens=4, ids=(1,))


def test_prompt_side_usage_counts_are_kept():
    rec = RequestRecord(index=0)
    take_usage({"choices": [], "usage": {"prompt_tokens": 400, "completion_tokens": 3,
                                         "prompt_tokens_details": {"cached_tokens": 384}}}, rec)
    assert rec.usage == {"cached_tokens": 384} and rec.input_units == 400


def _row(label: str, **point) -> ResultRow:
    return ResultRow(run_id="r", stack="s", setting="C", scenario="c", profile="tiny", kind="performance",
                     status="ok", load_point={"label": label, **point}, started_at="2026-01-01T00:00:00Z")


def test_the_leaderboard_reads_a_point_named_by_part_of_its_label_and_plots_along_a_point_key():
    rows = [_row("conc=8,tail=127", concurrency=8, tail=127), _row("conc=8,tail=128", concurrency=8, tail=128)]
    assert _pick_label(rows, "tail=128") == "conc=8,tail=128"
    assert _pick_label(rows, "tail=12") is None
    assert _load_x(rows[0], "tail") == 127.0 and _load_x(rows[0]) == 8.0


def test_the_agent_starts_from_the_stack_the_setting_names():
    from agent.__main__ import _starting_stack

    assert _starting_stack("hybrid_prefix_caching").endswith("results/stacks/engine-c")
    assert _starting_stack("standard_serving").endswith("results/stacks/engine-a")
    with pytest.raises(SystemExit, match="unknown scenario"):
        _starting_stack("nope")


def test_a_leaderboard_load_point_that_names_no_point_is_refused(tmp_path):
    """`load_point: conc-1` (a test id, not a label) matched no row of setting E and emptied its
    table; a YAML naming no point of a profile is now refused when it is read."""
    from pathlib import Path

    import yaml

    from harness.scenario import find_scenarios, load_scenario

    shipped = Path(__file__).resolve().parents[1] / "scenarios"
    assert find_scenarios(shipped)  # every shipped setting names a point it has
    data = yaml.safe_load((shipped / "json_schema_decoding.yaml").read_text())
    data["leaderboard"]["load_point"] = "conc-1"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(HarnessError, match="names no load point of profile 'tiny' \\(conc=1, conc=4\\)"):
        load_scenario(bad)
    data["leaderboard"]["load_point"] = "tail=128"  # parts of a label: only where a point has them
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(HarnessError, match="names no load point"):
        load_scenario(bad)


def test_a_points_needs_are_read_and_join_the_words_a_stack_may_use():
    from pathlib import Path

    from harness.scenario import load_points, load_scenario

    points = load_points({"num_prompts": 4, "points": [{"request_rate": None, "temperature": 1.0, "needs": ["sampling"]},
                                                       {"concurrency": 1}]})
    assert points[0].needs == ("sampling",) and points[0].params == {"temperature": 1.0}
    assert points[0].describe()["needs"] == ["sampling"] and "needs" not in points[1].describe()
    yaml = Path(__file__).resolve().parent.parent / "scenarios" / "standard_serving.yaml"
    assert "sampling" in load_scenario(yaml).vocabulary


def test_a_stack_lacking_a_points_need_gets_a_not_applicable_row_for_that_point(tmp_path):
    """hf-reference decodes greedily only: setting A's sampled point is not applicable to it, with
    the spec's reason, while the test's other points stay its own."""
    import subprocess
    import sys
    from pathlib import Path

    from harness.row import read_rows

    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "pytest", "scenarios/test_standard_serving.py", "-p", "no:cacheprovider",
                          "-q", "--stack", "hf-reference", "-k", "performance and temperature", "--results-dir",
                          str(tmp_path), "--no-leaderboard"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert "1 skipped" in out.stdout, out.stdout[-2000:]
    rows = [r for r in read_rows(tmp_path) if r.kind == "performance"]
    assert len(rows) == 1 and rows[0].status == "not_applicable"
    assert rows[0].load_point["label"] == "rate=inf,temperature=1.0,top_p=0.9"
    assert "does not support sampling (decodes greedily only" in rows[0].error
