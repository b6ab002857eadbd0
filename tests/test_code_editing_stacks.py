"""Setting B's oracle against test-double stacks (tests/stacks/prediction_server.py).

The transformers reference is replaced by the double's known output (the prompt's words), and its
reading of an output on past a near-tie left out, so these tests exercise the harness end to end over
HTTP without a model: an honest stack passes,
one whose output changes with `prediction` fails the lossless judge, and ones that report no
accepted prediction tokens fail the engagement guard, in the accuracy row and in the cell.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import harness.bench
from harness.bench import Bench, OutputCheck
from harness.generation import Generation, Prompt
from harness.launcher import launch
from harness.loadgen import LoadPoint
from harness.prefix_cache import ResetOutcome
from harness.scenario import load_scenario
from harness.stack import REPO_ROOT, load_spec
from scenarios.workloads.code_edit import PREDICTION

SCENARIO = REPO_ROOT / "scenarios" / "code_editing.yaml"
EOS = "<|im_end|>"
CODE = ["def f(x):\n    return x + 1\n", "def g(a, b):\n    if a < b:\n        return a\n    return b\n"]
PROMPTS = [Prompt(id=f"item{i}", text=f"Fix the bug.\n{code}", chat=True, max_tokens=12,
                  extra={"prediction": {"type": "content", "content": code.replace("+", "-").replace("<", ">")}})
           for i, code in enumerate(CODE)]


def expected(prompt: Prompt) -> Generation:
    """What the double answers without a prediction: the prompt's words, one token each."""
    tokens = [" " + w for w in prompt.text.split()][: prompt.max_tokens]
    top = [{t: -0.1, " alt1": -2.0, " alt2": -2.5, " alt3": -3.0, " alt4": -3.5} for t in tokens]
    stopped = len(tokens) < prompt.max_tokens
    return Generation(tokens=tokens, top=top + ([{EOS: -0.1}] if stopped else []),
                      finish_reason="stop" if stopped else "length", text="".join(tokens))


@pytest.fixture(autouse=True)
def known_reference(monkeypatch):
    monkeypatch.setattr(harness.bench, "reference_outputs", lambda _dir, prompts, *a, **k: [expected(p) for p in prompts])
    monkeypatch.setattr(harness.bench, "eos_strings", lambda _dir: {EOS})
    monkeypatch.setattr(harness.bench, "special_strings", lambda _dir: frozenset({EOS}))
    # No model stands behind this reference to read an output on past a near-tie (harness/continuation.py,
    # tested against the real one in test_near_tie_read_on.py): the token match is what these tests judge.
    monkeypatch.setattr(harness.bench, "read_on", lambda verdict, *_: verdict)


RELAUNCH = "off_switch: {prediction: {args: [--no-spec]}}"


def spec_file(tmp_path: Path, mode: str, supports: str = "[chat, logprobs, prediction]", off: str = RELAUNCH) -> Path:
    path = tmp_path / f"double-{mode}.yaml"
    path.write_text(f"name: double-{mode}\ncommand: [python, tests/stacks/prediction_server.py, --port, \"{{port}}\", "
                    f"--mode, {mode}]\nhealth: /health\nstartup_timeout_s: 30\nsupports: {supports}\n"
                    + (f"{off}\n" if "prediction" in supports and off else ""))
    return path


def run(tmp_path: Path, mode: str, supports: str = "[chat, logprobs, prediction]", off: str = RELAUNCH):
    spec = load_spec(spec_file(tmp_path, mode, supports, off))
    with launch(spec, tmp_path, tmp_path / "logs", startup_timeout_s=30) as stack:
        bench = Bench(run_id="b-oracle-test", results_dir=tmp_path / "results", scenario=load_scenario(SCENARIO),
                      profile="tiny", spec=spec, stack=stack, model_dir=None)
        verdict = bench.lossless_accuracy(PROMPTS, request_timeout_s=30, guard=PREDICTION, reference_dir=tmp_path)
        payloads = [{"model": "x", "messages": [{"role": "user", "content": p.text}], "max_tokens": p.max_tokens,
                     "temperature": 0, **p.extra} for p in PROMPTS]
        row = bench.measure("chat", payloads, LoadPoint(num_prompts=2, concurrency=1, warmup=0), 30, guard=PREDICTION,
                            check=OutputCheck([p.without_extra() for p in PROMPTS]))
    return verdict, bench.rows[0], row


def test_an_honest_stack_passes_every_part(tmp_path):
    verdict, acc_row, perf_row = run(tmp_path, "honest")
    assert verdict.ok, verdict.failures()
    assert acc_row.status == "ok" and acc_row.accuracy["verdict"] == "pass" and acc_row.engagement["verdict"] == "pass"
    assert acc_row.counters["spec_accepted_tokens"] > 0
    assert acc_row.stack_info["runtime"] == perf_row.stack_info["runtime"] == {"speculation": True}  # from /v1/models
    assert acc_row.accuracy["lossless"]["off"] == "prediction off: relaunched with --no-spec"
    assert perf_row.status == "ok", perf_row.error
    assert perf_row.outputs["verdict"] == "pass" and perf_row.outputs["judged"] == [0, 1]
    assert perf_row.metrics["accepted_prediction_tokens"] > 0
    assert perf_row.metrics["median_tok_per_s"] > 0 and perf_row.counters["spec_accepted_tokens"] > 0


def test_a_speculative_path_that_rounds_differently_fails_against_the_stack_relaunched_with_it_off(tmp_path):
    """The double's verify path flips a near-tie with or without a prediction (as engine-b's oneDNN
    verify steps did on an AMD EPYC): the reference's near-tie rule lets it through, dropping the
    request field would not see it, and the relaunch with --no-spec does."""
    verdict, acc_row, _ = run(tmp_path, "rounds")
    assert verdict.reference.ok and not verdict.lossless.ok and not verdict.ok
    reason = verdict.lossless.prompts[0].reason
    assert "token 8 differs" in reason and "off ' 1', on ' alt1'" in reason, reason  # the reply's last word
    assert acc_row.status == "failed" and acc_row.accuracy["lossless"]["off"] == "prediction off: relaunched with --no-spec"
    assert (tmp_path / "results" / "runs" / "b-oracle-test" / "logs" / "double-rounds.prediction-off.log").is_file()


def test_a_request_field_can_be_the_off_switch(tmp_path):
    verdict, acc_row, _ = run(tmp_path, "rounds", off="off_switch: {prediction: {request: {speculate: false}}}")
    assert not verdict.lossless.ok and "on ' alt1'" in verdict.lossless.prompts[0].reason
    assert acc_row.accuracy["lossless"]["off"] == "prediction off: requests with speculate=False"
    verdict, _, _ = run(tmp_path, "honest", off="off_switch: {prediction: {request: {speculate: false}}}")
    assert verdict.ok, verdict.failures()


def test_a_stack_that_declares_prediction_without_an_off_switch_is_judged_on_the_reference_only(tmp_path):
    verdict, acc_row, _ = run(tmp_path, "rounds", off="")
    assert verdict.lossless is None and verdict.reference.ok and verdict.ok
    assert "not checked" in verdict.summary and "no `off_switch`" in verdict.summary
    assert acc_row.accuracy["lossless"]["verdict"] == "not_checked"


def test_output_that_changes_with_the_prediction_fails_the_lossless_judge(tmp_path):
    verdict, acc_row, _ = run(tmp_path, "cheat")
    assert not verdict.ok and not verdict.lossless.ok
    assert all(not p.ok for p in verdict.lossless.prompts)
    reason = verdict.lossless.prompts[0].reason
    assert "differs" in reason and "off ' Fix', on ' def'" in reason and "top-5 off" in reason
    assert acc_row.status == "failed" and acc_row.accuracy["lossless"]["verdict"] == "fail"


def test_zero_accepted_tokens_fail_the_engagement_guard(tmp_path):
    verdict, acc_row, perf_row = run(tmp_path, "idle")
    assert verdict.lossless.ok and verdict.reference.ok and not verdict.ok
    assert "engagement guard" in verdict.engagement.reason and "accepted_prediction_tokens = 0" in verdict.engagement.reason
    assert acc_row.status == "failed"
    assert perf_row.status == "failed" and "engagement guard" in perf_row.error
    assert perf_row.metrics["completed"] == 2  # measured all the same; the row just is not credited


def test_a_stack_that_reports_nothing_fails_the_guard_too(tmp_path):
    verdict, _, perf_row = run(tmp_path, "silent")
    assert not verdict.ok and "not reported" in verdict.engagement.reason
    assert perf_row.status == "failed" and "spec_accepted_tokens absent" in perf_row.error


def test_a_stack_without_prediction_is_a_baseline_without_the_guard(tmp_path):
    verdict, acc_row, perf_row = run(tmp_path, "silent", supports="[chat, logprobs]")
    assert verdict.ok and verdict.engagement is None and acc_row.engagement is None
    assert perf_row.status == "ok" and perf_row.engagement is None


def test_the_passes_with_and_without_prediction_each_start_on_a_cold_prefix_cache(tmp_path):
    """A stack whose reused cache changes a token (vLLM's bf16 K/V, computed in other chunks, can
    flip a near-tie) is judged on the prediction alone: the cache is reset before each pass."""
    verdict, acc_row, _ = run(tmp_path, "cached", supports="[chat, logprobs]")
    assert verdict.ok, verdict.failures()
    assert acc_row.stack_info["prefix_cache_reset"].startswith("done"), acc_row.stack_info["prefix_cache_reset"]


def test_the_cached_double_would_fail_without_the_reset(tmp_path, monkeypatch):
    """The check above can fail: with the resets skipped the second pass reuses the first's cache."""
    monkeypatch.setattr(Bench, "reset_prefix_cache", lambda self, *_: ResetOutcome("skipped", True))
    verdict, acc_row, _ = run(tmp_path, "cached", supports="[chat, logprobs]")
    assert not verdict.lossless.ok and "' cached'" in verdict.lossless.prompts[0].reason


@pytest.mark.parametrize("mode, reason", [("garbage", "text differs at token 0"), ("overcount", "usage says 11 tokens; the text is the reference's 9")])
def test_a_stack_right_only_when_judged_or_that_overcounts_fails_its_performance_cell(tmp_path, mode, reason):
    verdict, acc_row, perf_row = run(tmp_path, mode)
    if mode == "garbage":
        assert verdict.ok  # logprobs asked: the accuracy pass sees the honest reply
    assert perf_row.status == "failed" and perf_row.outputs["verdict"] == "fail", perf_row.outputs
    assert reason in perf_row.outputs["summary"], perf_row.outputs
    if mode == "overcount":  # the other reply is cut at max_tokens 12 and counted 14: the request itself fails
        assert perf_row.metrics["failed"] == 1 and perf_row.outputs["judged"] == [0], perf_row.outputs


def test_accepted_tokens_without_the_forward_passes_they_save_fail_the_guard(tmp_path):
    verdict, acc_row, perf_row = run(tmp_path, "claims")
    assert not verdict.ok and "not one pass saved" in verdict.engagement.reason, verdict.engagement
    assert perf_row.status == "failed" and "not one pass saved" in perf_row.error, perf_row.error
