"""`python -m harness matrix`: score settings x stacks over the machines of a Ray cluster.

A job is one `python -m harness compare` run: one setting, the stacks in its scope, its rounds, on
one machine. Ratios are only ever taken within a run, so a job never spans machines, and a machine
runs one job at a time (harness.cluster.SLOT). `--on each` runs every setting on every machine
(the leaderboard keeps a table per CPU model: an AMD EPYC's and an AMX Xeon's rows side by side);
`--on any` runs each setting once, on whichever machine frees up first. Before anything runs,
each machine says what it is and which commit its checkout is at; a machine at another commit than
this one measures other code and gets no job (`--any-commit` to allow it). Each job's run folder
comes back here under results/runs/, whole or as far as it got, and the leaderboard is written
once at the end.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness import machine as host
from harness import session
from harness.atomic import atomic_write_bytes
from harness.bench import new_run_id
from harness.cluster import SLOT, JobResult, Node, connect, describe, run_job, slot_nodes
from harness.compare import chosen_baselines
from harness.errors import HarnessError
from harness.scenario import ScenarioSpec
from harness.stack import SCOPE, resolve_stack

DESCRIBE_TIMEOUT_S = 120.0  # a machine that cannot say what it is within this gets no job
STATUS = {0: "ok", 1: "cells failed"}  # compare's exit codes; 1: some cell failed its oracle, rows written


@dataclass(frozen=True)
class Job:
    scenario: str  # the YAML's name
    setting: str
    stacks: tuple[str, ...]  # --stack values, scopes kept (pytest reads them)
    baselines: tuple[str, ...]
    node: Node | None  # the machine it must run on (--on each), or None: any with a free slot
    run_id: str

    def argv(self, profile: str, rounds: int, extra: list[str]) -> list[str]:
        """`python -m harness compare` for this job, `{results_dir}` left for its machine to fill."""
        argv = ["-m", "harness", "compare", "--scenario", self.scenario, "--profile", profile, "--rounds", str(rounds),
                "--results-dir", "{results_dir}", "--run-id", self.run_id]
        for s in self.stacks:
            argv += ["--stack", s]
        for b in self.baselines:
            argv += ["--baseline", b]
        return [*argv, "--", "--no-leaderboard", *extra]


@dataclass(frozen=True)
class Outcome:
    job: Job
    status: str  # ok | cells failed | error | timed out | lost
    node: Node | None  # where it ran; None: lost before it said so (and not pinned)
    files: int  # written under its run folder, logs aside
    detail: str = ""
    started: float | None = None  # when it ran, on its machine's clock
    ended: float | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.started is None or self.ended is None else self.ended - self.started

    @property
    def machine(self) -> str:
        return self.node.label if self.node else "a machine that was lost"


def in_scope(arg: str, setting: str) -> bool:
    """Whether a `--stack` value (NAME or NAME@A+B) is scored on `setting`."""
    scope = SCOPE.search(arg)
    return scope is None or setting in scope.group(1).split("+")


def plan(scenarios: list[ScenarioSpec], stacks: list[str], baselines: list[str], nodes: list[Node] | None,
         ) -> tuple[list[Job], list[str]]:
    """The jobs (per setting, and per machine where `nodes` is given) and a line for each setting left out."""
    chosen_baselines(stacks, baselines)  # every stack resolves and every baseline is one of them, or one line
    names = {arg: resolve_name(arg) for arg in stacks}
    jobs: list[Job] = []
    skipped: list[str] = []
    for spec in scenarios:
        scoped = tuple(s for s in stacks if in_scope(s, spec.setting))
        if not scoped:
            skipped.append(f"{spec.setting} {spec.name}: no stack is scoped to it")
            continue
        chosen = {names[s] for s in scoped}
        base = tuple(b for b in baselines if names.get(b, b) in chosen)
        for node in nodes or [None]:
            jobs.append(Job(spec.name, spec.setting, scoped, base, node, new_run_id()))
    return jobs, skipped


def same_commit(nodes: list[Node], sha: str | None, any_commit: bool) -> tuple[list[Node], list[str]]:
    """The machines whose checkout is at `sha` (all, with any_commit), and why each other one gets no job."""
    if any_commit:
        return nodes, []
    kept, refused = [], []
    for n in nodes:
        if n.sha and n.sha == sha:
            kept.append(n)
        else:
            refused.append(f"{n.label}: its checkout is at {(n.sha or 'no commit')[:12]}, this one at "
                           f"{(sha or 'no commit')[:12]}: check out the same commit there (or --any-commit)")
    return kept, refused


def run_matrix(scenarios: list[ScenarioSpec], stacks: list[str], baselines: list[str], profile: str, rounds: int,
               on: str, address: str | None, resources: dict[str, float], any_commit: bool, job_timeout_s: float,
               results_dir: Path, scenarios_dir: Path, extra: list[str], console: Console) -> list[Outcome]:
    scenarios = [s for s in scenarios if profile in s.profiles]
    if not scenarios:
        raise HarnessError(f"no setting has a profile {profile!r}")
    plan(scenarios, stacks, baselines, None)  # a wrong stack or baseline is one line, before Ray starts
    ray = connect(address)
    try:
        nodes = _machines(ray, resources, any_commit, console)
        jobs, skipped = plan(scenarios, stacks, baselines, nodes if on == "each" else None)
        for line in skipped:
            console.print(f"[yellow]left out[/] {line}")
        console.print(f"{len(jobs)} jobs ({profile}, {rounds} round{'s' * (rounds > 1)} each) on {len(nodes)} "
                      f"machine{'s' * (len(nodes) > 1)}, one at a time on each")
        outcomes = _run(ray, jobs, nodes, profile, rounds, resources, job_timeout_s, extra, results_dir, console)
    finally:
        ray.shutdown()
    if any(o.files for o in outcomes):
        from harness.leaderboard import write_leaderboard

        console.print(f"leaderboard: {write_leaderboard(results_dir, scenarios_dir)}")
    console.print(render(outcomes))
    return outcomes


def _machines(ray, resources: dict[str, float], any_commit: bool, console: Console) -> list[Node]:
    """The machines that get jobs: a slot, the extra resources, an answer, and this checkout's commit."""
    found = slot_nodes(ray)
    if not found:
        raise HarnessError(f"no machine of the cluster offers a {SLOT!r} slot: start each one with "
                           f"ray start ... --resources '{{\"{SLOT}\": 1}}'")
    offered = {n["NodeID"]: n.get("Resources", {}) for n in ray.nodes()}
    found = [n for n in found if all(offered[n.node_id].get(k, 0) >= v for k, v in resources.items())]
    if not found:
        raise HarnessError(f"no machine with a slot offers {resources}")
    described = []
    for node in found:
        ref = _pinned(ray, describe, node, {}).remote()
        ready, _ = ray.wait([ref], timeout=DESCRIBE_TIMEOUT_S)
        try:
            info: Node | None = ray.get(ready[0]) if ready else None
        except Exception as exc:  # noqa: BLE001 - any failure there is that machine's, reported
            info, why = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        else:
            why = f"no answer within {DESCRIBE_TIMEOUT_S:.0f} s"
        if info is None:
            console.print(f"[yellow]no job for[/] {node.address}: {why}")
            ray.cancel(ref, force=True)
            continue
        described.append(info)
    here = host.commit()
    kept, refused = same_commit(described, here["sha"], any_commit)
    for line in refused:
        console.print(f"[yellow]no job for[/] {line}")
    if here["dirty"] and len(kept) > 1:
        console.print("[yellow]note[/]: this checkout has uncommitted changes; the other machines run their own tree")
    if not kept:
        raise HarnessError("no machine is left to run the jobs")
    for n in kept:
        console.print(f"machine {n.label}, commit {(n.sha or '?')[:12]}{' (dirty)' if n.dirty else ''}")
    return kept


def _pinned(ray, fn, node: Node | None, resources: dict[str, float]):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options = {"num_cpus": 0, "max_retries": 0, "resources": resources}
    if node is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
    return ray.remote(fn).options(**options)


def _run(ray, jobs: list[Job], nodes: list[Node], profile: str, rounds: int, resources: dict[str, float],
         timeout_s: float, extra: list[str], results_dir: Path, console: Console) -> list[Outcome]:
    """Submit the jobs pinned to a machine at once (Ray queues each on its machine's slot); hand the
    others out here, each to the first of `nodes` with none of them running (so none lands on a
    machine that was refused). Take each verdict as it lands; Ctrl-C cancels what has not (each stops
    its harness and stacks on its machine) and keeps what landed."""
    queue = [j for j in jobs if j.node is None]
    refs: dict = {}  # every submitted job, by its Ray reference
    pending: set = set()

    def submit(job: Job) -> None:
        task = _pinned(ray, run_job, job.node, {SLOT: 1, **resources})
        ref = task.remote(job.argv(profile, rounds, extra), job.run_id, timeout_s)
        refs[ref] = job
        pending.add(ref)

    for job in [j for j in jobs if j.node is not None]:
        submit(job)
    for node in nodes[:len(queue)]:
        submit(replace(queue.pop(0), node=node))
    outcomes: list[Outcome] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("jobs", total=len(jobs))
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
                for ref in ready:
                    pending.discard(ref)
                    outcomes.append(_land(ray, ref, refs[ref], results_dir))
                    console.print(line(outcomes[-1]))
                    progress.advance(bar)
                    if queue and outcomes[-1].status != "lost":  # the machine that ran it is free again
                        submit(replace(queue.pop(0), node=refs[ref].node))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)  # not force: the job stops its own session (harness.cluster.run_job)
            # before Ray shuts down (a local instance takes its workers with it): each stops its stacks first
            ray.wait(list(pending), num_returns=len(pending), timeout=session.GRACE_S + 15)
            console.print(f"interrupted: {len(pending)} jobs cancelled on their machines, {len(queue)} never "
                          f"started; {len(outcomes)} landed and are kept")
            raise
    # jobs handed out here whose machines were all lost
    outcomes += [Outcome(job, "lost", None, 0, "no machine was left to run it") for job in queue]
    return outcomes


def _land(ray, ref, job: Job, results_dir: Path) -> Outcome:
    try:
        result: JobResult = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - a machine lost, a worker killed: that job's verdict
        first = str(exc).strip().splitlines()
        return Outcome(job, "lost", job.node, 0, f"{type(exc).__name__}: {first[0] if first else ''}"[:300])
    for rel, data in result.files.items():
        atomic_write_bytes(results_dir / "runs" / job.run_id / rel, data)
    written = sum(1 for rel in result.files if not rel.startswith("logs/"))  # rows, records, compare.json
    if result.exit_code is None:
        status, detail = "timed out", f"stopped at its deadline; the {written} files it wrote are kept"
    else:
        status = STATUS.get(result.exit_code, "error")
        detail = "" if status != "error" else f"exit code {result.exit_code}: {_last_line(result.output_tail)}"
    headline = _headline(result.files.get("compare.json"), job)
    if headline:
        detail = f"{headline}{'; ' + detail if detail else ''}"
    if result.left_behind:
        detail += f"{'; ' if detail else ''}too large to bring back: {', '.join(result.left_behind)}"
    return Outcome(job, status, result.node, written, detail, result.started, result.ended)


def _headline(summary: bytes | None, job: Job) -> str:
    """The first stack against each baseline over the run's load points ('engine-a 1.31-2.63x vllm'):
    what a reader of the matrix compares across machines; the run's own table has every cell."""
    try:
        ratios = json.loads(summary)["ratios"] if summary else []
    except (ValueError, KeyError, TypeError):
        return ""
    if not ratios:
        return ""
    first = resolve_name(job.stacks[0])
    spans: dict[str, list[float]] = {}
    for r in ratios:
        if r.get("stack") == first and r.get("value"):
            spans.setdefault(r["baseline"], []).append(r["value"])
    parts = [f"{min(v):.2f}x" if min(v) == max(v) else f"{min(v):.2f}-{max(v):.2f}x" for v in spans.values()]
    return ", ".join(f"{first} {p} {b}" for p, b in zip(parts, spans)) if spans else ""


def resolve_name(arg: str) -> str:
    return resolve_stack(SCOPE.sub("", arg)).name


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def line(o: Outcome) -> str:
    took = f"{o.seconds / 60:.1f} min" if o.seconds is not None else "-"
    colour = {"ok": "green", "cells failed": "yellow"}.get(o.status, "red")
    return (f"[{colour}]{o.status}[/] {o.job.setting} {o.job.scenario} on {o.machine}: run {o.job.run_id}, {took}"
            f"{', ' + o.detail if o.detail else ''}")


def render(outcomes: list[Outcome]) -> Table:
    table = Table(title="matrix")
    for col in ("setting", "machine", "status", "run", "minutes", "files", "detail"):
        table.add_column(col)
    for o in sorted(outcomes, key=lambda o: (o.job.setting, o.machine)):
        table.add_row(f"{o.job.setting} {o.job.scenario}", o.machine, o.status, o.job.run_id,
                      f"{o.seconds / 60:.1f}" if o.seconds is not None else "-", str(o.files), o.detail)
    return table

