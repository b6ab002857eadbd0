"""Setting E's schema judge fails what a wrong or cheating stack returns: JSON for another request,
text that ignores the schema, an answer cut at max_tokens, another run's sentinel; and its gates
(95% valid, sentinel rate at least the reference's) decide the cell."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_json_schemas import example

from scenarios.workloads.json_schema import judge_output, judge_outputs, load_tasks

TASKS = load_tasks()
SALT = "run-1"


def right(task, salt: str = SALT) -> str:
    return json.dumps(example(task.schema, task.sentinel(salt), task.sentinel_field))


def test_a_right_output_is_valid_and_carries_the_sentinel():
    for task in TASKS:
        v = judge_output(task, task.sentinel(SALT), right(task), "stop")
        assert v.ok and v.detail == {"valid": True, "sentinel": True}, (task.id, v.reason)


def test_valid_json_for_another_request_fails():
    wrong = [(a, b) for a, b in zip(TASKS, TASKS[1:] + TASKS[:1])]
    verdicts = [judge_output(a, a.sentinel(SALT), right(b), "stop") for a, b in wrong]
    assert not any(v.ok for v in verdicts), [v.prompt_id for v in verdicts if v.ok]
    assert "invalid at /" in verdicts[0].reason


def test_another_runs_sentinel_is_valid_but_not_the_sentinel():
    task = TASKS[0]
    v = judge_output(task, task.sentinel(SALT), right(task, salt="run-0"), "stop")
    assert v.ok and not v.detail["sentinel"] and "sentinel not at" in v.reason


@pytest.mark.parametrize("text, why", [("Sure! Here is the JSON you asked for.", "not JSON"),
                                       ('{"city": 3}', "invalid at /"),
                                       ("[]", "invalid at /")])
def test_output_that_ignores_the_schema_fails(text, why):
    v = judge_output(TASKS[0], TASKS[0].sentinel(SALT), text, "stop")
    assert not v.ok and why in v.reason


def test_an_answer_cut_at_max_tokens_is_invalid_even_if_it_parses():
    task = TASKS[0]
    v = judge_output(task, task.sentinel(SALT), right(task), "length")
    assert not v.ok and "cut at max_tokens" in v.reason


def test_a_format_is_checked():
    task = next(t for t in TASKS if '"format": "email"' in json.dumps(t.schema))
    good = json.loads(right(task))
    text = json.dumps(good).replace("a@b.co", "not-an-email")
    assert "not-an-email" in text
    assert not judge_output(task, task.sentinel(SALT), text, "stop").ok


def test_the_cell_gates():
    tasks = TASKS[:20]
    texts = [right(t) for t in tasks]
    reasons = ["stop"] * 20
    assert judge_outputs(tasks, SALT, texts, reasons, sentinel_floor=1.0).ok
    one_bad = texts[:19] + ["{}"]
    v = judge_outputs(tasks, SALT, one_bad, reasons, sentinel_floor=0.9)
    assert v.ok and v.valid_rate == 0.95  # 19 of 20: at the gate
    two_bad = texts[:18] + ["{}", "{}"]
    assert not judge_outputs(tasks, SALT, two_bad, reasons).ok
    stale = [right(t, salt="run-0") for t in tasks[:4]] + texts[4:]
    v = judge_outputs(tasks, SALT, stale, reasons, sentinel_floor=0.9)
    assert v.valid_rate == 1.0 and v.sentinel_rate == 0.8 and not v.ok and "sentinel 80%" in v.summary


def test_a_profiles_fixed_sentinel_gate_replaces_the_references_rate():
    """paper: 0.9, the study's gate, whatever the reference's rate; no reference is decoded for it."""
    from scenarios.workloads.json_schema import sentinel_floor

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "scenarios" / "json_schema_decoding.yaml").read_text())
    gate = spec["profiles"]["paper"]["sentinel_gate"]
    assert gate == 0.9 and spec["profiles"]["tiny"]["sentinel_gate"] is None
    assert sentinel_floor(TASKS[:20], SALT, model_dir=None, prompts=[], top_k=5, gate=gate) == 0.9
    tasks = TASKS[:20]
    eighty_five = [right(t, salt="run-0") for t in tasks[:3]] + [right(t) for t in tasks[3:]]
    v = judge_outputs(tasks, SALT, eighty_five, ["stop"] * 20, sentinel_floor=gate)
    assert v.valid_rate == 1.0 and v.sentinel_rate == 0.85 and not v.ok

def test_grammar_metrics_read_the_stacks_counters_per_output_token_and_are_empty_without_them():
    from harness.metrics import resolve, summarize
    from harness.records import Event, RequestRecord
    from scenarios.workloads.json_schema import forced_token_share, grammar_compiles, mask_ms_per_token

    def done(n: int) -> RequestRecord:
        return RequestRecord(index=0, sent_at=0.0, events=[Event(0.1 * (i + 1), 1) for i in range(n)], reported_units=n)

    failed = RequestRecord(index=1, sent_at=0.0, error="boom")
    records = [done(30), done(10), failed]  # 40 output tokens; the failed one counts none
    moved = {"mask_us_total": 20_000.0, "jump_forward_tokens": 10.0, "grammar_compiles": 2.0}
    assert mask_ms_per_token(records, moved) == pytest.approx(0.5)
    assert forced_token_share(records, moved) == pytest.approx(0.25)
    assert grammar_compiles(records, moved) == 2.0
    for fn in (mask_ms_per_token, forced_token_share, grammar_compiles):
        assert fn(records, None) is None and fn(records, {"forward_passes": 9.0}) is None
    assert mask_ms_per_token([failed], moved) is None
    # through the YAML, as a cell's row gets them
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "scenarios" / "json_schema_decoding.yaml").read_text())
    row = summarize(records, {}, resolve(spec["metrics"]), moved)
    assert row["mask_ms_per_token"] == pytest.approx(0.5) and row["forced_token_share"] == pytest.approx(0.25)
