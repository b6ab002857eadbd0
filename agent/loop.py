"""The outer loop: per round, evaluate -> plan one task -> implement (up to N attempts, judge feedback
fed back) -> judge -> measure -> checkpoint (commit + tag) or roll back to the last checkpoint.

Every phase is a commit in the workspace; state.json says which phase a round is in, so a run
killed anywhere resumes from its last checkpoint with its records intact.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from agent import integrity, knobs, processes, stackfiles
from agent.backends.base import Backend, ImplementContext, PlanContext
from agent.config import RunConfig
from agent.display import Display
from agent.evaluator import Measurement, measure_stack, measurement
from agent.judge import Judge, Judgement
from agent.objective import Objective, objective_for
from agent.patch import PatchRejected, apply
from agent.progress import ProgressLog, now_iso
from agent.publish import Final, publish_stack
from agent.roadmap import Roadmap, parse
from agent.rounds import CHECKPOINT, REJECTED, ROLLED_BACK, RoundRecord, RoundsLog, last_checkpoint, markdown_table
from agent.signals import best_before, compute
from agent.usage import UsageLog
from agent.workspace import Workspace
from harness.scenario import ScenarioSpec, load_scenario
from harness.stack import REPO_ROOT

SCENARIOS_DIR = REPO_ROOT / "scenarios"


def _rows_of(judgement: Judgement) -> list:
    """The judged stack's rows (a harness run may hold other stacks' too)."""
    rows = judgement.harness.rows if judgement.harness else []
    return [r for r in rows if not judgement.stack or r.stack == judgement.stack]


class IntegrityBroken(RuntimeError):
    """The harness's files changed during the run: no judgement can be trusted any more."""


@dataclass
class RunResult:
    run_id: str
    workspace: Path
    stop_reason: str
    final: Final
    published: Path | None
    table: str


def scenario_files(name: str) -> tuple[ScenarioSpec, dict]:
    path = SCENARIOS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml")))
        raise ValueError(f"unknown scenario {name!r}; known: {known}")
    return load_scenario(path), (yaml.safe_load(path.read_text()).get("agent") or {})


class AgentLoop:
    def __init__(self, cfg: RunConfig, backend: Backend, display: Display | None = None,
                 judge: Judge | None = None) -> None:
        self.cfg, self.backend, self.display = cfg, backend, display or Display()
        self.injected_judge = judge  # tests stand a fake judge in for the harness
        self.scenario, agent_cfg = scenario_files(cfg.scenario)
        for p in {cfg.profile, cfg.eval_profile}:
            self.scenario.profile(p)  # an unknown profile is an error now, not after the first round
        self.objective: Objective = objective_for(self.scenario, agent_cfg, cfg.metric, cfg.direction, cfg.margin,
                                                  cfg.baselines)
        self.columns = tuple(c for c in self.scenario.leaderboard.columns if c != self.objective.metric)
        self.ws = Workspace(cfg.workspace.resolve())
        self.progress = ProgressLog(self.ws.root / "progress.md")
        self.rounds = RoundsLog(self.ws.root / "rounds.json")
        self.usage = UsageLog(self.ws.root / "usage.jsonl")
        self.judge: Judge | None = judge

    # ================================================================== setup and resume

    def create(self) -> None:
        ws = Workspace.create(self.ws.root)
        processes.acquire(ws.root)
        snap = integrity.snapshot(REPO_ROOT)
        source = Path(self.cfg.source).resolve() if self.cfg.source else None
        note = self.backend.start(ws, source, self.stack_name)
        ws.write_json("run.json", {"config": self.cfg.to_json(), "integrity": snap.to_json(),
                                   "objective": self.objective.__dict__ | {"baselines": list(self.objective.baselines)},
                                   "started_at": now_iso()})
        o = self.objective
        ws.write("roadmap.md", Roadmap(goal=f"Goal: pass the {self.cfg.scenario} oracle and beat "
                                            f"{', '.join(o.baselines) or 'no baseline'} on {o.metric} "
                                            f"({o.direction} is better) by a margin of {o.margin:g}x.").render())
        self.progress.add(0, "setup", f"run {self.cfg.run_id}: scenario {self.cfg.scenario}, backend {self.backend.name}, "
                                      f"inner profile {self.cfg.eval_profile}, final profile {self.cfg.profile}; "
                                      f"objective {self.objective.metric} ({self.objective.direction} is better), "
                                      f"margin {self.objective.margin:g}x over {', '.join(self.objective.baselines)}\n{note}")
        if snap.uncommitted:
            self.progress.add(0, "integrity", "the project's oracle files differ from its last commit at the start "
                                              f"({', '.join(snap.uncommitted)}); the run is judged against them as "
                                              "they are now, and any later change is rejected")
        ws.commit("setup: starting stack")
        self.display.event(0, "setup", note)
        self.judge = self.injected_judge or Judge(self.scenario, snap, self.cfg.timeout_s)

    def resume(self) -> None:
        ws = Workspace.open(self.ws.root)
        processes.acquire(ws.root)
        killed = processes.reap(ws.root)
        run = ws.read_json("run.json")
        self.judge = self.injected_judge or Judge(self.scenario, integrity.Snapshot.from_json(run["integrity"]),
                                                  self.cfg.timeout_s)
        state = ws.read_json("state.json", {}) or {}
        records = self.rounds.load()
        cp = last_checkpoint(records)
        target = cp.tag if cp and cp.tag and ws.tag_sha(cp.tag) else None
        if state.get("phase") == "finished":
            lost = "the run had finished"
        elif state:
            lost = f"round {state.get('round')} was interrupted in phase {state.get('phase')}"
        else:
            lost = "no round was running"
        if target:
            ws.rollback(target, f"resume: back to checkpoint {target} ({lost})")
        else:  # killed before round 0 was recorded: start from the setup commit
            setup = ws.git("rev-list", "--max-parents=0", "HEAD")
            ws.rollback(setup.splitlines()[-1], f"resume: back to the starting stack ({lost})")
        self.progress.add(state.get("round", 0), "resume", f"resumed: {lost}; its uncommitted work was discarded and the "
                          f"stack reset to {target or 'the starting stack'}"
                          + (f"; ended leftover processes {killed}" if killed else ""))
        self.display.event(state.get("round", 0), "resume", f"{lost}; continuing from {target or 'the start'}")

    @property
    def stack_name(self) -> str:
        return f"{self.cfg.scenario}-agent-{self.cfg.run_id}"

    # ================================================================== the run

    def run(self, resume: bool = False) -> RunResult:
        if resume and not self.ws.started():  # killed in set-up: nothing was recorded, so set up again
            shutil.rmtree(self.ws.root)
            resume = False
        self.resume() if resume else self.create()
        try:
            self.ensure_baselines(self.cfg.eval_profile)
            if not self.rounds.load():
                self.round_zero()
            stop = ""
            while not stop:
                records = self.rounds.load()
                n = records[-1].round + 1
                if n - 1 >= self.cfg.min_rounds and self.good_enough(records):
                    stop = "the stack passes the judge and beats every baseline by the margin"
                elif n > self.cfg.max_rounds:
                    stop = f"round budget ({self.cfg.max_rounds}) spent"
                else:
                    stop = self.round(n)
            self.progress.add(self.rounds.load()[-1].round, "loop", f"stop: {stop}")
            self.display.event(self.rounds.load()[-1].round, "stop", stop, style="bold")
            final = self.final()
            published = self.publish(final)
            self.ws.write_json("state.json", {"phase": "finished", "stop": stop, "at": now_iso()})
            self.ws.commit(f"finished: {stop}")
            return RunResult(self.cfg.run_id, self.ws.root, stop, final, published, self.table())
        finally:
            processes.release(self.ws.root)

    def state(self, round_no: int, phase: str, attempt: int = 0) -> None:
        self.ws.write_json("state.json", {"round": round_no, "phase": phase, "attempt": attempt, "at": now_iso()})

    # ================================================================== baselines

    def ensure_baselines(self, profile: str) -> dict[str, float | None]:
        """Each baseline measured once per profile per run (kept in baselines.json)."""
        stored = self.ws.read_json("baselines.json", {}) or {}
        have = stored.setdefault(profile, {})
        for name in self.objective.baselines:
            if name in have:
                continue
            with self.display.working(f"measuring baseline {name} on {profile}"):
                m = self.measure_baseline(name, profile)
            have[name] = m.to_json()
            self.ws.write_json("baselines.json", stored)
            text = (f"{name} on {profile}: {self.objective.metric} = {m.value:.2f}" if m.value is not None
                    else f"{name} on {profile}: not measured ({m.problem[:300]}); it cannot be beaten or counted")
            self.progress.add(0, "baseline", text)
            self.display.event(0, "baseline", text)
            self.ws.commit(f"baseline {name} on {profile}")
        return {k: Measurement.from_json(v).value for k, v in have.items() if k in self.objective.baselines}

    def _store_baselines(self, profile: str, judgement: Judgement) -> None:
        stored = self.ws.read_json("baselines.json", {}) or {}
        for name in self.objective.baselines:
            rows = [r for r in judgement.harness.rows if r.stack == name]
            if rows:
                stored.setdefault(profile, {})[name] = measurement(rows, self.objective, self.columns).to_json()
        self.ws.write_json("baselines.json", stored)

    def measure_baseline(self, name: str, profile: str) -> Measurement:
        m, _ = measure_stack(self.cfg.scenario, name, profile, self.ws.path("results"),
                             f"{self.cfg.run_id}-baseline-{profile}", self.objective, self.columns, self.cfg.timeout_s)
        return m

    def ratios(self, value: float | None, profile: str) -> dict[str, float | None]:
        bases = self.ensure_baselines(profile)
        return {k: (self.objective.ratio(value, v) if value is not None and v else None) for k, v in bases.items()}

    def good_enough(self, records: list[RoundRecord]) -> bool:
        """The stop test: the checkpoint passed and beats each measured baseline by the margin, and by more
        than the noise band (one measurement each on a shared machine: 1.01x is not a win)."""
        cp = last_checkpoint(records)
        bases = [v for v in self.ensure_baselines(self.cfg.eval_profile).values() if v is not None]
        if cp is None or not cp.passed or cp.metric is None or not bases:
            return False
        bar = max(self.objective.margin, 1.0 + self.cfg.min_gain)
        return all(self.objective.beats(cp.metric, b) and self.objective.ratio(cp.metric, b) >= bar for b in bases)

    # ================================================================== round 0: the starting stack

    def round_zero(self) -> None:
        self.state(0, "judge", 1)
        record = RoundRecord(round=0, task="starting stack", outcome=CHECKPOINT, started_at=now_iso(),
                             change={"config": self._knob_config()})
        if not self.ws.path("stack.yaml").is_file():
            record.judge = "no stack yet"
        else:
            judgement = self._judge(0, 1)
            self._score(record, judgement)
        record.attempts = 1 if self.ws.path("stack.yaml").is_file() else 0
        self.ws.tag("round-0")
        record.tag, record.commit, record.finished_at = "round-0", self.ws.head(), now_iso()
        self._record(record)

    def _knob_config(self) -> dict:
        if not self.ws.path("stack.yaml").is_file():
            return {}
        try:
            data = stackfiles.load(self.ws.root)
            return knobs.current(data["command"], knobs.from_spec(data))
        except (ValueError, OSError, yaml.YAMLError):
            return {}

    # ================================================================== one round

    def round(self, n: int) -> str:
        """Run round n; returns a stop reason, or "" to go on."""
        records = self.rounds.load()
        started = now_iso()
        self.state(n, "plan")
        ctx = PlanContext(round=n, scenario=self.cfg.scenario, profile=self.cfg.eval_profile, objective=self.objective,
                          roadmap=parse(self.ws.read("roadmap.md")) if self.ws.path("roadmap.md").is_file() else Roadmap(),
                          signals=compute(records, self.objective), records=records, current=self._current(records),
                          baselines=self.ensure_baselines(self.cfg.eval_profile), workspace=self.ws,
                          progress_tail=self.progress.tail())
        with self.display.working(f"round {n}: planning"):
            planned = self.backend.plan(ctx)
        self.usage.add(planned.usage)
        self.ws.write("roadmap.md", planned.roadmap.render())
        task = planned.task
        if task.stop:
            self.progress.add(n, "planner", f"nothing left to try: {task.stop}")
            self.ws.commit(f"r{n} plan: stop")
            return f"the planner stopped: {task.stop}"
        self.progress.add(n, "planner", f"task: {task.title}\npass criteria: {task.pass_criteria}\n"
                                        f"item: {task.item or '-'}\nreasoning: {task.reasoning or '-'}")
        self.display.event(n, "planner", task.title)
        self.ws.commit(f"r{n} plan: {task.title}")
        self._revert(n, task.revert_to_round)

        judgement, attempts = self._attempts(n, task)
        record = RoundRecord(round=n, task=task.title, item=task.item, change=task.change, attempts=attempts,
                             outcome=REJECTED, started_at=started)
        self.state(n, "measure")
        if judgement is not None:
            self._score(record, judgement)
        best = best_before(records + [record], n, self.objective)
        keep = record.passed and record.metric is not None and (
            best is None or self.objective.gain(record.metric, best) > self.cfg.min_gain)
        if keep:
            self.ws.commit(f"r{n} checkpoint: {self.objective.metric}={record.metric:.2f}")
            self.ws.tag(f"round-{n}")
            record.outcome, record.tag = CHECKPOINT, f"round-{n}"
        else:
            record.outcome = ROLLED_BACK if record.passed else REJECTED
            cp = last_checkpoint(records)
            why = "not better than the best" if record.passed else "the judge failed"
            self.ws.rollback(cp.tag, f"r{n} rollback to {cp.tag}: {why}")
        record.commit, record.finished_at = self.ws.head(), now_iso()
        self._note_outcome(task.item, record)
        self._record(record)
        return ""

    def _note_outcome(self, item_id: str, record: RoundRecord) -> None:
        """The round's outcome on its roadmap item, so the roadmap is current even when no plan follows."""
        roadmap = parse(self.ws.read("roadmap.md"))
        if not item_id or roadmap.get(item_id) is None:
            return
        gain = "" if record.gain is None else f" ({record.gain * 100:+.1f}%)"
        what = {CHECKPOINT: f"kept{gain}", ROLLED_BACK: f"rolled back: not better{gain}",
                REJECTED: f"rejected: {record.judge}"}[record.outcome]
        roadmap.set_status(item_id, roadmap.get(item_id).status, f"round {record.round} ({record.task}): {what}",
                           record.round)
        self.ws.write("roadmap.md", roadmap.render())

    def _revert(self, n: int, to_round: int | None) -> None:
        if to_round is None:
            return
        tag = f"round-{to_round}"
        if self.ws.tag_sha(tag) is None:
            self.progress.add(n, "loop", f"revert to round {to_round} ignored: it has no checkpoint")
            return
        self.ws.rollback(tag, f"r{n} revert to {tag} (planner)")
        self.progress.add(n, "loop", f"reverted the stack to {tag}, as the planner asked")

    def _attempts(self, n: int, task) -> tuple[Judgement | None, int]:
        """Implement, then judge, up to max_attempts times; returns the last judgement and the attempts used."""
        base = self.ws.head()
        feedback: list[str] = []
        judgement, used = None, 0
        for attempt in range(1, self.cfg.max_attempts + 1):
            self.state(n, "implement", attempt)
            with self.display.working(f"round {n}: implementing (attempt {attempt})"):
                impl = self.backend.implement(ImplementContext(n, attempt, task, self.objective, self.ws, list(feedback)))
            self.usage.add(impl.usage)
            if impl.patch is None:
                self.progress.add(n, f"implementer a{attempt}", ("gives up: " if impl.gave_up else "no patch: ") + impl.note)
                self.display.event(n, "implementer", ("gives up: " if impl.gave_up else "no patch: ") + impl.note)
                if impl.gave_up:
                    break
                used = attempt
                feedback.append(impl.note)
                self.ws.rollback(base, f"r{n} a{attempt} no patch")
                continue
            used = attempt
            try:
                written = apply(impl.patch, self.ws)
            except PatchRejected as exc:
                self.progress.add(n, f"implementer a{attempt}", f"patch rejected before it was applied: {exc}")
                self.display.event(n, "integrity", f"patch rejected: {exc}", style="red")
                feedback.append(f"Your patch was rejected and nothing was written: {exc}")
                self.ws.rollback(base, f"r{n} a{attempt} patch rejected")
                judgement = Judgement(False, f"patch rejected: {str(exc)[:150]}", str(exc))
                continue
            self.progress.add(n, f"implementer a{attempt}", f"{impl.patch.summary or 'patch'}\nfiles: {', '.join(written)}")
            self.ws.commit(f"r{n} a{attempt} implement: {impl.patch.summary or ', '.join(written)}"[:200])
            judgement = self._judge(n, attempt)
            if judgement.ok:
                break
            feedback.append(judgement.feedback)
        return judgement, used

    def _judge(self, n: int, attempt: int, profile: str | None = None, alongside: tuple[str, ...] = ()) -> Judgement:
        self.state(n, "judge", attempt)
        profile = profile or self.cfg.eval_profile
        with self.display.working(f"round {n}: judging and measuring on {profile}"):
            judgement = self.judge(self.ws, f"{self.cfg.run_id}-r{n}-a{attempt}-{profile}", profile,
                                   alongside=alongside)
        self.progress.add(n, f"judge a{attempt}", ("PASS: " if judgement.ok else "FAIL: ") + judgement.summary
                          + ("" if judgement.ok else "\n" + judgement.feedback[:1500]))
        self.display.event(n, "judge", ("pass: " if judgement.ok else "FAIL: ") + judgement.summary,
                           style="" if judgement.ok else "red")
        self.ws.commit(f"r{n} a{attempt} judge: {'pass' if judgement.ok else 'fail'}")
        if judgement.fatal:
            cp = last_checkpoint(self.rounds.load())
            if cp and cp.tag:
                self.ws.rollback(cp.tag, f"r{n} rollback: the harness's files changed")
            if integrity.check(self.judge.snapshot):
                raise IntegrityBroken(f"the harness's files changed during round {n}: {judgement.fatal}; restore them "
                                      f"(git checkout) and --resume")
        return judgement

    def _score(self, record: RoundRecord, judgement: Judgement) -> None:
        record.passed, record.judge = judgement.ok, judgement.summary
        if not judgement.ok or judgement.harness is None:
            return
        m = measurement(_rows_of(judgement), self.objective, self.columns)
        spy = judgement.probes.spy if judgement.probes else ""
        record.metric, record.metrics = m.value, m.metrics
        record.profile = (m.profile or m.problem) + (f"\npy-spy dump under load:\n{spy}" if spy else "")
        best = best_before(self.rounds.load(), record.round, self.objective)
        record.gain = self.objective.gain(m.value, best) if m.value is not None and best is not None else None
        record.baseline_ratios = self.ratios(m.value, self.cfg.eval_profile)

    def _record(self, record: RoundRecord) -> None:
        record.signals = compute(self.rounds.load() + [record], self.objective).names()
        self.rounds.append(record)
        gain = "" if record.gain is None else f" ({record.gain * 100:+.1f}% vs best)"
        value = "no measurement" if record.metric is None else f"{self.objective.metric}={record.metric:.2f}{gain}"
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in record.baseline_ratios.items() if v is not None and not math.isnan(v))
        text = (f"{record.outcome}: {value}" + (f"; vs {ratios}" if ratios else "")
                + (f"; signals: {', '.join(record.signals)}" if record.signals else ""))
        self.progress.add(record.round, "loop", text)
        self.display.event(record.round, "loop", text, style="green" if record.kept and record.passed else "yellow")
        self.ws.commit(f"r{record.round} record: {record.outcome}")

    def _current(self, records: list[RoundRecord]) -> Measurement:
        cp = last_checkpoint(records)
        if cp is None or cp.metric is None:
            return Measurement(None, problem=cp.judge if cp else "no stack measured yet")
        return Measurement(cp.metric, dict(cp.metrics), profile=cp.profile)

    # ================================================================== the end

    def winner(self) -> RoundRecord | None:
        passed = [r for r in self.rounds.load() if r.kept and r.passed and r.metric is not None]
        best = None
        for r in passed:
            if best is None or self.objective.better(r.metric, best.metric):
                best = r
        return best

    def final(self) -> Final:
        """Judge the winner on the profile the user named, next to the baselines on that profile."""
        win = self.winner()
        profile = self.cfg.profile
        if win is None:
            return Final(profile, None, False, summary="no stack passed the judge")
        if not self.ws.same_stack(win.tag):
            self.ws.rollback(win.tag, f"final: back to the winner {win.tag}")
        if profile == self.cfg.eval_profile:
            value, passed, how = win.metric, True, f"round {win.round}'s judgement on {profile} (the same profile)"
        else:
            # The baselines are benchmarked in the same harness run as the winner, as the leaderboard does.
            judgement = self._judge(win.round, 0, profile=profile, alongside=self.objective.baselines)
            m = measurement(_rows_of(judgement), self.objective, self.columns) if judgement.harness else None
            value, passed = (m.value if m else None), judgement.ok
            how = f"a fresh judgement on {profile}, baselines measured in the same harness run: {judgement.summary}"
            if judgement.harness and passed:
                self._store_baselines(profile, judgement)
        ratios = self.ratios(value, profile) if passed else {}
        bases = self.ensure_baselines(profile) if passed else {}
        measured = [v for v in bases.values() if v is not None]
        beats = passed and bool(measured) and all(self.objective.beats(value, b) for b in measured)
        final = Final(profile, win.round, passed, value, bases, ratios, beats,
                      f"winner: round {win.round} ({win.tag}); {how}")
        ratio_text = ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if v is not None)
        self.progress.add(win.round, "final", f"{final.summary}; {'PASS' if passed else 'FAIL'}; "
                          f"{self.objective.metric}={value if value is None else round(value, 2)}; "
                          f"{'beats every baseline' if beats else 'does not beat every baseline'}"
                          + (f" ({ratio_text})" if ratio_text else ""))
        self.ws.write_json("final.json", final.__dict__)
        return final

    def table(self) -> str:
        shown = tuple(c for c in self.columns if c.startswith("median_")) or self.columns[:2]
        return markdown_table(self.rounds.load(), self.objective, shown)

    def publish(self, final: Final) -> Path | None:
        """The winning stack under results/stacks/<scenario>-agent-<run-id>/, with its rounds table."""
        if not final.passed or final.round is None:
            return None
        intro = (f"Generated by `python -m agent run --scenario {self.cfg.scenario} --backend {self.backend.name}` "
                 f"(run {self.cfg.run_id}). Inner evaluations on profile `{self.cfg.eval_profile}`; final judgement "
                 f"on `{final.profile}`.")
        dst = publish_stack(self.ws, Path(self.cfg.publish_dir) / self.stack_name, intro, final, self.objective,
                            self.table())
        self.progress.add(final.round, "publish", f"published to {dst}")
        return dst
