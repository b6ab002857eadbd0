"""The outer loop without a harness: the offline policy against a fake judge whose 'harness' scores
knob settings. The fake judge fails bfloat16 (as an exact-match oracle would) and otherwise reports
a throughput that grows as the per-step overhead falls; hf-reference is pinned at 95 tok/s."""
from __future__ import annotations

from pathlib import Path

from agent_helpers import search_stack

from agent import knobs, stackfiles
from agent.backends.offline import OfflineBackend
from agent.config import RunConfig
from agent.display import Display
from agent.evaluator import Measurement
from agent.harness_run import HarnessRun
from agent.judge import Judgement
from agent.loop import AgentLoop
from harness.row import ResultRow


class FakeJudge:
    snapshot = None

    def __init__(self) -> None:
        self.calls = 0
        self.profiles: list[str] = []
        self.baseline_value = 50.0  # hf-reference as measured next to the winner

    def __call__(self, ws, run_id, profile, measure=True, alongside=()) -> Judgement:
        self.calls += 1
        self.profiles.append(profile)
        data = stackfiles.load(ws.root)
        config = knobs.current(data["command"], knobs.from_spec(data))
        if config["dtype"] == "bfloat16":
            return Judgement(False, "oracle: 3/4 held-out prompts diverge", "The held-out accuracy oracle failed")
        value = 120 - float(config["step-overhead-ms"]) + 5 * int(config["threads"])
        rows = [_row(run_id, profile, "s", value)] + [_row(run_id, profile, b, self.baseline_value) for b in alongside]
        return Judgement(True, "pass", stack="s", harness=HarnessRun(run_id, 0, rows))


def _row(run_id: str, profile: str, stack: str, value: float) -> ResultRow:
    return ResultRow(run_id=run_id, stack=stack, setting="A", scenario="standard_serving", profile=profile,
                     kind="performance", status="ok", load_point={"label": "rate=8.0", "request_rate": 8.0},
                     metrics={"output_throughput": value, "median_ttft_ms": 100.0, "median_tpot_ms": 20.0})


def fast_loop(tmp_path: Path, judge, baseline: float = 95.0, **overrides) -> AgentLoop:
    settings = dict(scenario="standard_serving", profile="smoke", eval_profile="smoke", backend="offline",
                    source=str(search_stack(tmp_path / "source")), run_id="fast", runs_dir=str(tmp_path / "runs"),
                    publish_dir=str(tmp_path / "stacks"))
    cfg = RunConfig(**(settings | overrides))
    loop = AgentLoop(cfg, OfflineBackend(), Display(quiet=True), judge=judge)
    loop.measure_baseline = lambda name, profile: Measurement(baseline, {"output_throughput": baseline})
    return loop
