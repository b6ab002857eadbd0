"""Setting B's oracle parts: strict lossless judge, engagement guard, /metrics counters, prediction usage.

Unit level here; tests/test_code_editing_stacks.py runs them against test-double servers.
"""
from __future__ import annotations

from harness.transports.openai_sse import take_usage
from harness.counters import delta, parse
from harness.engagement import Guard
from harness.generation import Generation, Prompt, from_openai
from harness.metrics import summarize
from harness.oracle import judge_lossless
from harness.records import Event, RequestRecord
from harness.reference import cache_key
from scenarios.workloads.code_edit import PREDICTION

EOS = {"<|im_end|>"}


def gen(tokens, finish="stop", tops=None):
    top = tops or [{t: -0.1, " x": -3.0} for t in tokens] + ([{"<|im_end|>": -0.05}] if finish == "stop" else [])
    return Generation(tokens=list(tokens), top=top, finish_reason=finish, usage_tokens=len(tokens))


def test_equal_outputs_pass_and_a_trailing_eos_token_is_ignored():
    off = gen(["a", "b", "c"])
    on = Generation(tokens=["a", "b", "c", "<|im_end|>"], top=off.top + [{}], finish_reason="stop", usage_tokens=4)
    verdict = judge_lossless(["p"], [off], [on], EOS)
    assert verdict.ok, verdict.summary


def test_a_divergence_fails_and_shows_both_top_k():
    off = gen(["a", "b", "c"])
    on = gen(["a", "B", "c"], tops=[{"a": -0.1}, {"B": -0.69, "b": -0.70}, {"c": -0.1}, {"<|im_end|>": -0.1}])
    verdict = judge_lossless(["p"], [off], [on], EOS)
    assert not verdict.ok
    p = verdict.prompts[0]
    assert p.diverged_at == 1
    assert "off 'b', on 'B'" in p.reason and "'B': -0.690" in p.reason and "top-2" in p.reason
    assert p.detail["index"] == 1 and p.detail["top_on"] == {"B": -0.69, "b": -0.70}


def test_near_ties_are_reported_but_still_fail():
    tie = [{"a": -0.1}, {"b": -0.693, "B": -0.694}, {"c": -0.1}, {"<|im_end|>": -0.1}]
    off = gen(["a", "b", "c"], tops=tie)
    on = gen(["a", "B", "c"], tops=[tie[0], {"B": -0.693, "b": -0.694}, *tie[2:]])
    p = judge_lossless(["p"], [off], [on], EOS).prompts[0]
    assert not p.ok and "near-tie?" in p.reason and abs(p.detail["logprob_gap"] - 0.001) < 1e-9


def test_stopping_early_or_running_on_is_a_divergence():
    off = gen(["a", "b"], finish="length")
    on = gen(["a"], finish="stop")
    p = judge_lossless(["p"], [off], [on], EOS).prompts[0]
    assert not p.ok and p.diverged_at == 1 and "<end-of-sequence>" in p.reason


def test_guard_passes_on_usage_or_counters_and_explains_a_failure():
    assert PREDICTION.check(12, None).ok
    assert PREDICTION.check(None, {"spec_accepted_tokens": 3.0}).ok
    failed = PREDICTION.check(0, {"spec_accepted_tokens": 0.0, "forward_passes": 9.0})
    assert not failed.ok and "accepted_prediction_tokens = 0" in failed.reason and "grew by 0" in failed.reason
    silent = PREDICTION.check(None, None)
    assert "not reported" in silent.reason and "no readable /metrics" in silent.reason
    assert PREDICTION.applies(["chat", "prediction"]) and not PREDICTION.applies(["chat"])
    assert Guard("x").check(None, {}).ok is False


def test_counters_read_json_and_prometheus_and_subtract():
    prom = ('# TYPE vllm:spec_decode_num_accepted_tokens counter\n'
            'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="a b}"} 40.0\n'
            'vllm:spec_decode_num_accepted_tokens_total{engine="1"} 2\n'
            'vllm:num_requests_running{engine="0"} 1.0\n')
    assert parse(prom) == {"vllm:spec_decode_num_accepted_tokens_total": 42.0}
    assert parse('{"spec_accepted_tokens": 5, "flag": true, "name": "x"}') == {"spec_accepted_tokens": 5.0}
    assert parse("<html>not metrics</html>") is None
    assert delta({"a": 1.0, "b": 2.0}, {"a": 4.0, "c": 1.0}) == {"a": 3.0}
    assert delta(None, {"a": 1.0}) is None


def test_usage_details_are_read_from_the_stream_and_summed():
    rec = RequestRecord(index=0, sent_at=0.0, events=[Event(0.1, 1), Event(0.5, 9)])
    take_usage({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 10, "completion_tokens_details":
                                          {"accepted_prediction_tokens": 7, "rejected_prediction_tokens": 2}}}, rec)
    assert rec.reported_units == 10 and rec.usage == {"accepted_prediction_tokens": 7, "rejected_prediction_tokens": 2}
    other = RequestRecord(index=1, sent_at=1.0, events=[Event(0.1, 1), Event(1.5, 29)], reported_units=30)
    m = summarize([rec, other])
    assert m["accepted_prediction_tokens"] == 7 and m["rejected_prediction_tokens"] == 2
    plain = summarize([RequestRecord(index=0, sent_at=0.0, events=[Event(0.1, 1), Event(0.2, 1)])])
    assert "accepted_prediction_tokens" not in plain


def test_non_streaming_usage_details_reach_the_generation():
    response = {"choices": [{"message": {"content": "x"}, "finish_reason": "stop",
                             "logprobs": {"content": [{"token": "x", "top_logprobs": [{"token": "x", "logprob": 0.0}]}]}}],
                "usage": {"completion_tokens": 1, "completion_tokens_details": {"accepted_prediction_tokens": 1}}}
    assert from_openai(response, chat=True).usage_details == {"accepted_prediction_tokens": 1}


def test_request_extras_do_not_change_the_reference_cache_key(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"0")
    plain = Prompt("a", "fix it", chat=True, max_tokens=8)
    with_prediction = Prompt("a", "fix it", chat=True, max_tokens=8, extra={"prediction": {"type": "content", "content": "x"}})
    assert cache_key(tmp_path, [plain], 5) == cache_key(tmp_path, [with_prediction], 5)
    assert plain.reference_key() == {"id": "a", "text": "fix it", "chat": True, "max_tokens": 8}
    thinking_off = Prompt("a", "fix it", chat=True, max_tokens=8, template_kwargs={"enable_thinking": False})
    assert cache_key(tmp_path, [plain], 5) != cache_key(tmp_path, [thinking_off], 5)


def test_setting_b_columns_have_readable_headings():
    from harness.leaderboard import metric_label
    from harness.scenario import load_scenario
    from harness.stack import REPO_ROOT

    labels = load_scenario(REPO_ROOT / "scenarios" / "code_editing.yaml").leaderboard.labels
    assert metric_label("median_tok_per_s", labels) == "median tok/s"  # the setting's own label
    assert metric_label("accepted_prediction_tokens") == "accepted prediction tokens"
    assert metric_label("p99_e2el_ms") == "E2E latency p99 (ms)"
