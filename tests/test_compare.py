"""`python -m harness compare`: ratios are direction-aware and only between cells of the same load
point; bandwidth achieved is computed only where one request decodes at a time, one token per
forward, from the bytes the stack loads."""
from __future__ import annotations

import json
import re

import pytest

from harness.bandwidth import Weights, memory_bandwidth, tokens_per_forward, weight_bytes, weights_read
from harness.compare import Cell, bandwidth_text, beside_text, cells_of, decode_bandwidth, ratio, ratios, stack_weights
from harness.row import ResultRow


def row(stack: str, label: str, value: float, tpot: float, concurrency: int | None = None,
        status: str = "ok", counters: dict | None = None, out: int | None = None,
        info: dict | None = None) -> ResultRow:
    metrics = {"output_throughput": value, "median_tpot_ms": tpot, "p99_ttft_ms": 50.0}
    return ResultRow(run_id="r", stack=stack, setting="A", scenario="s", profile="tiny", kind="performance",
                     status=status, load_point={"label": label, "concurrency": concurrency},
                     metrics=metrics | ({"total_output_tokens": out} if out is not None else {}),
                     counters=counters, stack_info=info or {})


def test_ratio_follows_the_metric_direction():
    assert ratio(300.0, 200.0, "higher") == pytest.approx(1.5)
    assert ratio(100.0, 200.0, "lower") == pytest.approx(2.0)  # half the latency: 2x better
    assert ratio(None, 200.0, "higher") is None and ratio(100.0, 0.0, "higher") is None


def test_ratios_pair_cells_of_the_same_load_point_only():
    rows = [row("engine", "rate=8.0", 300, 30), row("vllm", "rate=8.0", 250, 35), row("vllm", "rate=inf", 400, 40),
            row("engine", "conc=1", 50, 20, 1), row("vllm", "conc=1", 40, 25, 1)]
    cells = cells_of(rows + [ResultRow("r", "vllm", "A", "s", "tiny", "accuracy", "ok")], "output_throughput")
    assert len(cells) == 5  # the accuracy row is not a cell
    got = {(r.stack, r.baseline, r.label): r.value for r in ratios(cells, ["vllm"], "higher")}
    assert got == {("engine", "vllm", "rate=8.0"): pytest.approx(1.2), ("engine", "vllm", "conc=1"): pytest.approx(1.25)}


def test_repeats_become_one_cell_and_ratios_are_between_medians():
    """`--repeats 3`: each stack's repeats at a load point are one cell (their median), so a ratio
    compares medians, not each repeat with the baseline's last repeat."""
    rows = [row("engine", "conc=1", v, 4.0, 1) for v in (250, 252, 246)]
    rows += [row("vllm", "conc=1", v, 25.0, 1) for v in (41.5, 40.0, 30.0)]
    rows += [row("vllm", "conc=1", 0.0, 0.0, 1, status="failed")]  # a failed repeat is not a measurement
    cells = cells_of(rows, "output_throughput")
    assert [(c.stack, c.repeats, c.primary, c.primary_range) for c in cells] == [
        ("engine", 3, 250, (246, 252)), ("vllm", 3, 40.0, (30.0, 41.5))]
    [r] = ratios(cells, ["vllm"], "higher")
    assert r.value == pytest.approx(250 / 40.0)


def test_bandwidth_achieved_only_at_concurrency_one():
    one = Cell("engine", "conc=1", "ok", 45.0, 50.0, 20.0, 1)
    assert decode_bandwidth(one, 270_000_000) == pytest.approx(270e6 * 50)  # 50 tok/s between tokens
    assert decode_bandwidth(Cell("engine", "rate=8.0", "ok", 300.0, 50.0, 20.0, None), 270_000_000) is None
    assert decode_bandwidth(Cell("engine", "conc=1", "failed", None, None, None, 1), 270_000_000) is None


def test_weight_bytes_and_copy_bandwidth(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_text("{}")
    assert weight_bytes(tmp_path) == 1000
    assert memory_bandwidth(nbytes=64 << 20, repeats=2) > 1e8  # any machine copies faster than 100 MB/s


WEIGHTS = Weights(270_000_000, "safetensors")
OUT = 24 * 64  # a concurrency-1 cell's output tokens


def conc1(stack: str, counters: dict | None = None, info: dict | None = None, features: tuple[str, ...] = ()) -> Cell:
    [cell] = cells_of([row(stack, "conc=1", 50.0, 20.0, 1, counters=counters, out=OUT, info=info)],
                      "output_throughput", features)
    return cell


def test_bandwidth_only_for_one_token_per_forward():
    """weights x tok/s is the bytes read only where a forward yields one token: a stack that drafts
    and verifies several per forward (engine-b, vLLM n-gram) gets the reason, not an overstated number."""
    plain = conc1("engine-a", {"forward_passes": OUT + 3 * 24})  # prefill chunks are forwards too
    assert plain.bandwidth_withheld is None
    assert bandwidth_text(plain, WEIGHTS, 100e9) == "13.5 GB/s = 14% of 100.0"
    # a copy measured slower than the decode streamed: no percentage above 100
    assert bandwidth_text(plain, WEIGHTS, 10e9) == "13.5 GB/s, above the copy's 10.0: the machine's bandwidth moved, no %"
    drafts = conc1("engine-b", {"forward_passes": 560, "spec_accepted_tokens": 1000})
    assert drafts.bandwidth_withheld == "n/a: 2.9 tokens per forward"
    assert decode_bandwidth(drafts, WEIGHTS.nbytes) is None
    assert bandwidth_text(drafts, WEIGHTS, 100e9) == "n/a: 2.9 tokens per forward"
    ngram = conc1("vllm-ngram", {"vllm:generation_tokens_total": OUT,
                                 "vllm:spec_decode_num_accepted_tokens_total": 960})
    assert ngram.bandwidth_withheld == "n/a: 2.7 tokens per forward"
    nothing_accepted = {"vllm:generation_tokens_total": OUT, "vllm:spec_decode_num_accepted_tokens_total": 0}
    assert conc1("vllm-ngram", nothing_accepted).bandwidth_withheld is None  # speculation that never hit


def test_a_cell_is_judged_against_the_copies_beside_it():
    """A neighbour's memory-bound phase comes and goes within minutes: with copies measured just
    before and after each repeat (`--copy-bandwidth`), the percentage is of those, the better of
    each pair, median over repeats; the run's copies only stand in for a cell without them."""
    copies = [(20e9, 30e9), (15e9, 25e9), (40e9, None)]
    rows = [row("engine-a", "conc=1", 50.0, 20.0, 1, counters={"forward_passes": OUT}, out=OUT) for _ in copies]
    for r, (before, after) in zip(rows, copies):
        r.machine = {"copy_bandwidth_before": before} | ({"copy_bandwidth_after": after} if after else {})
    [cell] = cells_of(rows, "output_throughput")
    assert cell.copy_bandwidth == 30e9  # median of 30, 25, 40
    assert bandwidth_text(cell, WEIGHTS, 100e9) == "13.5 GB/s = 45% of 30.0"
    assert conc1("engine-a", {"forward_passes": OUT}).copy_bandwidth is None
    assert bandwidth_text(conc1("engine-a", {"forward_passes": OUT}), WEIGHTS, 100e9) == "13.5 GB/s = 14% of 100.0"


def test_the_machine_beside_each_repeat_is_kept_and_shown_per_round():
    """With the copies, the cores' bf16 matmul speed is measured beside each concurrency-1 repeat: the
    cell keeps both per repeat and their medians, and the table shows each round's with --rounds, so
    a slow round says whether the memory or the cores slowed (or neither: the stack did)."""
    beside = [(45.7e9, 424e9), (44.6e9, 420e9), (27.8e9, 301e9)]
    rows = [row("engine-b", "conc=1", 50.0, 20.0, 1, counters={"forward_passes": OUT}, out=OUT) for _ in beside]
    for i, (r, (copy, flops)) in enumerate(zip(rows, beside)):
        r.repeat = i
        r.machine = {"copy_bandwidth_before": copy, "copy_bandwidth_after": copy / 2,
                     "matmul_flops_before": flops / 2, "matmul_flops_after": flops}
    [cell] = cells_of(rows, "output_throughput")
    assert cell.beside == ((0, 45.7e9, 424e9), (1, 44.6e9, 420e9), (2, 27.8e9, 301e9))
    assert cell.copy_bandwidth == 44.6e9 and cell.matmul_speed == 420e9
    assert beside_text(cell, rounds=3) == "45.7 44.6 27.8 GB/s, 424 420 301 GFLOP/s"
    assert beside_text(cell, rounds=1) == "44.6 GB/s, 420 GFLOP/s"
    rows[1].machine = {}  # a repeat measured without them
    [cell] = cells_of(rows, "output_throughput")
    assert beside_text(cell, rounds=2) == "45.7 27.8 GB/s, 424 301 GFLOP/s"
    assert beside_text(conc1("engine-a", {"forward_passes": OUT}), rounds=3) == "-"


def test_counts_that_disagree_withhold_bandwidth():
    """Accepted drafts claimed with a forward per token, or fewer forwards than tokens and no
    drafts named: either estimate above one token per forward is enough."""
    assert tokens_per_forward({"forward_passes": OUT, "spec_accepted_tokens": OUT / 2}, OUT) == pytest.approx(2.0)
    assert conc1("quiet", {"forward_passes": OUT / 3}).bandwidth_withheld == "n/a: 3.0 tokens per forward"
    assert tokens_per_forward({"forward_passes": 0}, OUT) is None  # a counter that never moves is no evidence
    assert tokens_per_forward({"spec_accepted_tokens": OUT}, OUT) == float("inf")
    assert tokens_per_forward(None, OUT) is None and tokens_per_forward({"forward_passes": 10}, None) is None


def test_a_declared_speculation_without_counters_withholds_bandwidth():
    ngram = {"command": ["{engine:vllm}", "--speculative-config", json.dumps({"method": "ngram"})],
             "flags": {"speculative": {"method": "ngram"}}, "supports": ["completions"]}
    assert conc1("vllm-ngram", None, ngram).bandwidth_withheld == \
        "n/a: flags.speculative, and /metrics counts no forwards"
    assert conc1("vllm-ngram", None, ngram | {"flags": {}}).bandwidth_withheld == \
        "n/a: --speculative-config, and /metrics counts no forwards"
    feature = {"supports": ["chat", "drafting"], "flags": {"speculative": False}}
    assert conc1("s", None, feature, ("drafting",)).bandwidth_withheld == \
        "n/a: declares 'drafting', and /metrics counts no forwards"
    assert conc1("s", None, feature).bandwidth_withheld is None  # not a feature of this scenario
    assert conc1("hf-reference", None, {"flags": {"batching": "none"}}).bandwidth_withheld is None


def test_bandwidth_counts_the_bytes_the_stack_loads(tmp_path):
    """llama.cpp loads the GGUF file (Q4_1) its spec names as `{gguf}`, not the bf16 safetensors."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x" * 1000)
    gguf = tmp_path / "model.Q4_1.gguf"
    gguf.write_bytes(b"q" * 300)
    (model / "asset.json").write_text(json.dumps({"gguf": str(gguf), "files": {}}))
    llamacpp = ["{engine:llamacpp}", "-m", "llama_cpp.server", "--model", "{gguf}"]
    assert weights_read(model, llamacpp) == Weights(300, "model.Q4_1.gguf")
    assert weights_read(model, ["python", "--model", "{model}"]) == Weights(1000, "safetensors")
    assert weights_read(model, []) == Weights(1000, "safetensors")  # a url= stack
    (model / "asset.json").write_text(json.dumps({"files": {}}))
    assert weights_read(model, llamacpp) is None
    rows = [row("llamacpp", "conc=1", 50, 20.0, 1, info={"command": llamacpp}),
            row("vllm", "conc=1", 50, 20.0, 1, info={"command": ["{engine:vllm}", "--model", "{model}"]})]
    assert stack_weights(rows, model) == {"llamacpp": None, "vllm": Weights(1000, "safetensors")}
    [cell] = cells_of(rows[:1], "output_throughput")
    assert bandwidth_text(cell, None, 100e9) == "n/a: the GGUF file it loads was not found"


def test_a_failed_cell_gets_no_ratio():
    from harness.compare import Cell, ratios

    cells = [Cell("mine", "conc=1", "failed", 80.0, 1.0, 10.0, 1), Cell("vllm", "conc=1", "ok", 40.0, 1.0, 20.0, 1),
             Cell("mine", "rate=inf", "ok", 90.0, 1.0, 10.0, None), Cell("vllm", "rate=inf", "ok", 45.0, 1.0, 20.0, None)]
    got = {(r.stack, r.label): r.value for r in ratios(cells, ["vllm"], "higher")}
    assert got == {("mine", "conc=1"): None, ("mine", "rate=inf"): 2.0}


def test_rounds_alternate_the_stack_order_and_number_their_repeats():
    """`compare --rounds 3`: three sessions a b c, c b a, a b c, measuring repeats 0, 1 and 2 of one
    salt; only the last rewrites the leaderboard. One round is the plain run, arguments untouched."""
    from harness.compare import plan_rounds

    plan = plan_rounds(["a", "b", "c"], 3, ["-k", "conc-1"], "5a17")
    assert [r.stacks for r in plan] == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    assert [r.args for r in plan] == [
        ["-k", "conc-1", "--salt", "5a17", "--first-repeat", "0", "--no-leaderboard"],
        ["-k", "conc-1", "--salt", "5a17", "--first-repeat", "1", "--no-leaderboard"],
        ["-k", "conc-1", "--salt", "5a17", "--first-repeat", "2"]]
    assert plan_rounds(["a", "b"], 2, ["--salt=mine"], "5a17")[1].args == ["--salt=mine", "--first-repeat", "1"]
    only = plan_rounds(["a", "b"], 1, ["--repeats", "3"], "5a17")
    assert [(r.stacks, r.args) for r in only] == [(["a", "b"], ["--repeats", "3"])]


@pytest.mark.parametrize("extra", [["--repeats", "3"], ["--repeats=2"], ["--first-repeat", "1"]])
def test_rounds_refuse_repeats_of_their_own(extra):
    from harness.compare import plan_rounds
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="--rounds sets the repeats itself"):
        plan_rounds(["a", "b"], 2, extra, "5a17")
    with pytest.raises(HarnessError, match="at least 1"):
        plan_rounds(["a"], 0, [], "5a17")


def test_each_round_pairs_the_stacks_it_measured_and_the_table_shows_it():
    """With --rounds the ratio stays between medians; each round's own ratio (repeat r against
    repeat r) is kept beside it and shown, so a round that fell in a slow phase is visible. A repeat
    one stack lacks pairs with nothing."""
    from dataclasses import replace

    from rich.console import Console

    from harness.compare import ratio_text, render
    from harness.scenario import load_scenario
    from harness.stack import REPO_ROOT

    rows = [replace(row("fast", "conc=1", v, 5.0, concurrency=1), repeat=i) for i, v in enumerate([250.0, 240.0, 160.0])]
    rows += [replace(row("slow", "conc=1", v, 25.0, concurrency=1), repeat=i) for i, v in enumerate([40.0, 40.0])]
    (r,) = ratios(cells_of(rows, "output_throughput"), ["slow"], "higher")
    assert r.value == pytest.approx(240.0 / 40.0) and r.per_repeat == pytest.approx((6.25, 6.0))
    assert ratio_text(r, 3) == "6.00x slow (rounds 6.25 6.00)" and ratio_text(r, 1) == "6.00x slow"
    console = Console(width=250, record=True)
    scenario = load_scenario(REPO_ROOT / "scenarios" / "standard_serving.yaml")
    console.print(render(scenario, cells_of(rows, "output_throughput"), [r], {}, 40e9, ["conc=1"], rounds=3))
    assert "6.00x slow (rounds 6.25 6.00)" in console.export_text()
    (lower,) = ratios(cells_of(rows, "output_throughput"), ["slow"], "lower")
    assert lower.per_repeat == pytest.approx((40 / 250, 40 / 240))


def _no_probe(*_):
    raise AssertionError("the machine was probed before the arguments were checked")


@pytest.mark.parametrize("stacks, baselines, says", [
    (["engine-a", "nope"], [], "--stack nope: unknown stack"),
    (["engine-a", "vllm"], ["vlm"], "--baseline vlm: not one of the stacks compared (engine-a, vllm)"),
    (["engine-a@A", "engine-c.no_such_feature-off"], [], "has no off_switch"),
])
def test_a_wrong_stack_or_baseline_is_one_line_before_anything_is_measured_or_written(tmp_path, monkeypatch, stacks,
                                                                                    baselines, says):
    import harness.compare as compare_module
    from rich.console import Console

    from harness.errors import HarnessError

    monkeypatch.setattr(compare_module, "memory_bandwidth", _no_probe)
    monkeypatch.setattr(compare_module, "score_rounds", _no_probe)
    with pytest.raises(HarnessError, match=re.escape(says)):
        compare_module.compare("standard_serving", stacks, baselines, "tiny", tmp_path, None, [], Console())
    assert not (tmp_path / "runs").exists()


def test_baselines_are_named_as_rows_name_their_stacks(tmp_path):
    from harness.compare import chosen_baselines

    spec = tmp_path / "mine.yaml"
    spec.write_text(json.dumps({"name": "my-stack", "command": ["python", "-c", "pass"]}))
    assert chosen_baselines(["engine-a", str(spec)], [str(spec)]) == ["my-stack"]
    assert chosen_baselines(["engine-a", str(spec)], ["my-stack"]) == ["my-stack"]
    assert chosen_baselines(["engine-a", "engine-c.prefix_caching-off@C", "vllm"], []) == [
        "engine-c.prefix_caching-off", "vllm"]


def test_a_run_that_measured_nothing_writes_no_summary(tmp_path, monkeypatch):
    import harness.compare as compare_module
    from rich.console import Console

    from harness.errors import HarnessError

    monkeypatch.setattr(compare_module, "memory_bandwidth", lambda: 1e9)
    monkeypatch.setattr(compare_module, "matmul_speed", lambda: 1e9)
    monkeypatch.setattr(compare_module, "score_rounds", lambda *_: 5)  # pytest: no test selected
    with pytest.raises(HarnessError, match="pytest exited with code 5 and measured nothing"):
        compare_module.compare("standard_serving", ["engine-a"], [], "tiny", tmp_path, "r1", ["-k", "none"], Console())
    assert not (tmp_path / "runs" / "r1" / "compare.json").exists()


def test_a_stopped_compare_prints_and_keeps_what_it_measured_then_stops(tmp_path, monkeypatch):
    import harness.compare as compare_module
    from rich.console import Console

    def first_round_then_ctrl_c(scenario_file, stacks, profile, run_id, results_dir, extra):
        if "--first-repeat" in extra and extra[extra.index("--first-repeat") + 1] != "0":
            raise KeyboardInterrupt  # the second round: its pytest run is stopped (harness.session)
        for stack, value in (("engine-a", 200.0), ("vllm", 100.0)):
            r = row(stack, "rate=inf", value, 10.0)
            r.run_id = run_id
            r.write(results_dir)
        return 0

    probes = []
    monkeypatch.setattr(compare_module, "memory_bandwidth", lambda: probes.append("bw") or 1e10)
    monkeypatch.setattr(compare_module, "matmul_speed", lambda: 1e11)
    monkeypatch.setattr(compare_module, "run_pytest", first_round_then_ctrl_c)
    console = Console(record=True, width=200)
    with pytest.raises(KeyboardInterrupt):
        compare_module.compare("standard_serving", ["engine-a", "vllm"], [], "tiny", tmp_path, "r1", [], console,
                               rounds=3)
    summary = json.loads((tmp_path / "runs" / "r1" / "compare.json").read_text())
    assert summary["pytest_exit_code"] == compare_module.STOPPED and probes == ["bw"]  # no probe after the stop
    assert [r["value"] for r in summary["ratios"]] == [2.0]
    text = console.export_text()
    assert "interrupted: its stacks were stopped" in text and "2.00" in text
