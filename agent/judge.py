"""The judge: is the workspace's stack correct and honest? Never asks whether it is fast.

1. integrity: the harness, scenarios, conftest.py and baselines are as they were at the run's start;
2. probes: an unseen prompt and a sentinel prompt match the reference, forward passes grow (for a
   speech setting: unseen audio, every partial against the reference, encoder frames grow; for an
   image setting: an unseen prompt and seed, the image within the bounds, denoise steps grow);
3. the harness's own oracle for the setting (`pytest scenarios/test_<name>.py -k accuracy`), on the
   YAML's held-out accuracy seed; its details are withheld from the implementer so that it never
   tunes on the held-out prompts;
4. integrity again, in case the stack wrote to the instrument while it ran.
The harness run also holds the performance tests (`-x` stops it at a failed oracle), so one
launch serves both the judge and the evaluator.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from agent import integrity
from agent.audio_probes import run_audio_probes
from agent.harness_run import HarnessRun, run_scenario
from agent.image_probes import run_image_probes
from agent.probes import ProbeResult, run_probes
from agent.workspace import Workspace
from harness.assets import ensure_model
from harness.errors import HarnessError
from harness.scenario import ScenarioSpec
from harness.stack import load_spec
from harness.transports import transport


@dataclass
class Judgement:
    ok: bool
    summary: str  # one line, for tables and the log
    feedback: str = ""  # what the implementer may see
    fatal: str = ""  # set when the instrument itself changed: no judgement can be trusted
    stack: str = ""  # the judged stack's name in the rows
    harness: HarnessRun | None = None
    probes: ProbeResult | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Judge:
    scenario: ScenarioSpec
    snapshot: integrity.Snapshot
    timeout_s: float = 1800

    def __call__(self, ws: Workspace, run_id: str, profile: str, measure: bool = True,
                 alongside: tuple[str, ...] = ()) -> Judgement:
        """Judge the workspace's stack; with `alongside`, those stacks are benchmarked in the same harness
        run (the final judgement measures the baselines next to the winner)."""
        changed = integrity.check(self.snapshot)
        if changed:
            return _tampered(changed)
        try:
            spec = load_spec(ws.path("stack.yaml"))
            model_dir = ensure_model(self.scenario.profile(profile)["model"])
        except HarnessError as exc:
            return Judgement(False, f"invalid stack: {str(exc).splitlines()[0]}", f"The stack spec is invalid: {exc}")
        cfg = self.scenario.profile(profile)
        probe = {"audio_s": run_audio_probes, "images": run_image_probes}.get(
            transport(cfg["load"]["endpoint"]).unit, run_probes)
        probes = probe(spec, self.scenario, profile, model_dir, ws.path(f"logs/{run_id}"),
                       startup_timeout_s=cfg.get("stack_startup_timeout_s"))
        changed = integrity.check(self.snapshot)
        if changed:
            return _tampered(changed)
        if not probes.ok:
            return Judgement(False, probes.summary, "Reward-hack probes failed:\n" + "\n".join(probes.details),
                             probes=probes)
        run = run_scenario(self.scenario.name, [str(ws.path("stack.yaml")), *alongside], profile, ws.path("results"), run_id,
                           select=None if measure else "accuracy", stop_on_failure=True, timeout_s=self.timeout_s)
        changed = integrity.check(self.snapshot)
        if changed:
            return _tampered(changed)
        judgement = _oracle_verdict(run, spec.name, probes)
        judgement.stack = spec.name
        return judgement


def _tampered(changed: list[str]) -> Judgement:
    listing = "; ".join(changed[:10])
    return Judgement(False, f"integrity: the oracle/workload files changed ({listing})",
                     f"Rejected: files of the harness changed during the attempt ({listing}). A stack may only "
                     f"write inside its workspace.", fatal=listing)


def _oracle_verdict(run: HarnessRun, stack: str, probes: ProbeResult) -> Judgement:
    rows = run.rows_of(stack, "accuracy")
    if run.timed_out:
        return Judgement(False, "the harness run timed out", f"The harness run timed out.\n{run.output}", harness=run)
    if not rows:
        return Judgement(False, "the stack failed before the oracle could judge it",
                         f"The harness could not judge the stack. Its output:\n{run.output}", harness=run, probes=probes)
    row = rows[-1]
    acc = row.accuracy or {}
    if row.status == "not_applicable":
        return Judgement(False, f"oracle: not applicable ({row.error})", f"The oracle did not apply: {row.error}",
                         harness=run, probes=probes)
    prompts = acc.get("prompts") or []
    bad = [p for p in prompts if not p.get("ok")]
    if row.status != "ok" or acc.get("verdict") != "pass":
        first = min((p.get("diverged_at") or 0 for p in bad), default=0)
        return Judgement(False, f"oracle: {len(bad)}/{len(prompts)} held-out prompts diverge",
                         f"The held-out accuracy oracle failed: {len(bad)} of {len(prompts)} prompts diverge from the "
                         f"transformers reference (earliest divergence at output token {first}). The held-out prompts "
                         f"are not shown; the probe results above use fresh prompts and show the same kind of check.",
                         harness=run, probes=probes)
    perf_failed = [r for r in run.rows_of(stack, "performance") if r.status != "ok"]
    if run.returncode != 0 and perf_failed:
        why = perf_failed[0].error or perf_failed[0].status
        return Judgement(False, f"benchmark: {perf_failed[0].status}: {str(why)[:150]}",
                         f"The oracle passed but the benchmark failed: {why}\n{run.output}", harness=run, probes=probes)
    if run.returncode != 0:
        return Judgement(False, "the harness run failed", f"The harness run failed:\n{run.output}", harness=run,
                         probes=probes)
    return Judgement(True, f"pass: oracle {acc.get('summary', '')}; {probes.summary}", harness=run, probes=probes)
