"""One scoring session of one stack on one scenario profile: measures, judges, writes rows."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import secrets
import sys
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness import counters, prefix_cache
from harness import machine as host
from harness.assets import weights_checksum
from harness.bandwidth import memory_bandwidth
from harness.client import ENDPOINTS, HTTPStatusError, MalformedStream, post_json, session
from harness.compute import matmul_speed
from harness.continuation import read_on
from harness.engagement import Guard, GuardResult
from harness.errors import HarnessError, StackError
from harness.generation import Generation, Prompt, from_openai
from harness.launcher import RunningStack, launch
from harness.loadgen import LoadPoint, LoadResult, run_load_point
from harness.metrics import metric_label, summarize
from harness.metrics import resolve as resolve_metrics
from harness.oracle import Verdict, judge, judge_equal, judge_lossless, judge_texts
from harness.prefix_cache import ResetOutcome
from harness.prompts import repeat_salt
from harness.records import RequestRecord, write_records
from harness.reference import TOP_K, eos_strings, reference_outputs, special_strings
from harness.row import ResultRow
from harness.scenario import ScenarioSpec
from harness.stack import StackSpec
from harness.transports import transport


@dataclass(frozen=True)
class OutputCheck:
    """How a load point's outputs are judged: `prompts[i]` is the reference's prompt of measured
    request i (as the accuracy oracle would send it). `sample` of them (None: all) are drawn after
    the cell, from a secret seed, so a stack cannot tell which of its answers are looked at."""

    prompts: list[Prompt]
    sample: int | None = None
    top_k: int = TOP_K

    def draw(self, n: int, cell: str) -> list[int]:
        """The same draw for every stack of this run in one cell (their references are computed
        once), another in the next run; the seed never leaves this process."""
        if self.sample is None or self.sample >= n:
            return list(range(n))
        return sorted(random.Random(f"{_DRAW_SECRET}:{cell}").sample(range(n), self.sample))

    def judge(self, bench: "Bench", records: list[RequestRecord], cell: str) -> "OutputsVerdict":
        """The drawn outputs' text against the reference (near-tie rule from the reference's side),
        with the token count the stack reported for each."""
        if len(self.prompts) != len(records):
            raise HarnessError(f"an output check needs one prompt per measured request ({len(self.prompts)} "
                               f"for {len(records)})")
        drawn = [i for i in self.draw(len(records), cell) if records[i].ok]
        prompts = [self.prompts[i] for i in drawn]
        refs = reference_outputs(bench.model_dir, prompts, self.top_k, bench.log)
        texts = [records[i].text for i in drawn]
        verdict = judge_texts(prompts, refs, texts, special_strings(bench.model_dir), eos_strings(bench.model_dir),
                              [records[i].reported_units for i in drawn],
                              stops_at_eos=bench.spec.ignore_eos == "unsupported")
        verdict = read_on(verdict, bench.model_dir, prompts, texts, self.top_k)
        return OutputsVerdict(verdict, drawn, len(records))


_DRAW_SECRET = secrets.token_hex(16)


@dataclass(frozen=True)
class EqualityCheck:
    """Measured outputs judged by strict equality with what they must be (`expected[i]` for measured
    request i: a transcript, an image's bytes), as `output(record)` reads them; every one is judged."""

    ids: list[str]
    expected: list
    output: Callable[[RequestRecord], object] = lambda r: r.final

    def judge(self, bench: "Bench", records: list[RequestRecord], cell: str) -> "OutputsVerdict":
        done = [i for i, r in enumerate(records) if r.ok]
        verdict = judge_equal([self.ids[i] for i in done], [self.expected[i] for i in done],
                              [self.output(records[i]) for i in done])
        return OutputsVerdict(verdict, done, len(records))


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@contextmanager
def progress_bar(description: str, total: int):
    """A live bar on the terminal when there is one; silent (no log spam) otherwise."""
    console = Console(file=sys.__stderr__)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda *_: bar.advance(task)


@dataclass
class Bench:
    run_id: str
    results_dir: Path
    scenario: ScenarioSpec
    profile: str
    spec: StackSpec
    stack: RunningStack | None  # None when the stack does not support the setting
    model_dir: Path | None = None
    log: Callable[[str], None] = lambda _: None
    unmet: list[str] = field(default_factory=list)  # hardware the stack needs and this machine lacks
    startup_timeout_s: float | None = None  # for launches of the stack's variants (None: its spec's)
    benchmark: object | None = None  # pytest-benchmark's fixture, where the test asked for it
    salt: str | None = None  # the run's workload salt, recorded in every row (a repeat's: harness.prompts.repeat_salt)
    copy_bandwidth: bool = False  # measure the machine's copy bandwidth and matmul speed just before and after each concurrency-1 cell
    rows: list[ResultRow] = field(default_factory=list)
    _model_card: dict | None = field(default=None, repr=False)

    @property
    def model_card(self) -> dict:
        """The first model the stack lists in /v1/models (as `vllm bench` takes it); {} without one."""
        if self._model_card is None:
            try:
                card = httpx.get(self.stack.base_url + "/v1/models", timeout=10).json()["data"][0]
                self._model_card = card if isinstance(card, dict) else {}
            except Exception:  # noqa: BLE001 - a stack without /v1/models accepts any name
                self._model_card = {}
        return self._model_card

    @property
    def served_model(self) -> str:
        """The name to put in requests: the first model the stack lists ("default" without one)."""
        return str(self.model_card.get("id") or "default")

    def _row(self, kind: str, **fields) -> ResultRow:
        info = self.spec.info() | ({"startup_s": round(self.stack.started_s, 1), "engines": self.stack.engines}
                                   if self.stack else {})
        if self.stack and isinstance(self.model_card.get("runtime"), dict):
            info["runtime"] = self.model_card["runtime"]  # what the stack chose on this machine (kernels, checks)
        if self.model_dir is not None:
            info["weights_sha256_16"] = weights_checksum(self.model_dir)
            info["model_dir"] = self.model_dir.name
        return ResultRow(run_id=self.run_id, stack=self.spec.name, setting=self.scenario.setting,
                         scenario=self.scenario.name, profile=self.profile, kind=kind, stack_info=info,
                         machine=host.machine() | {"loadavg_before": host.loadavg()}, commit=host.commit(),
                         versions=host.versions(), started_at=now_iso(), **({"salt": self.salt} | fields))

    def _finish(self, row: ResultRow, records: list[RequestRecord] | None = None) -> ResultRow:
        row.machine["loadavg_after"] = host.loadavg()
        row.finished_at = now_iso()
        if records is not None:
            records_path = row.path_in(self.results_dir).with_suffix(".records.jsonl")
            write_records(records_path, records)
            row.records_file = records_path.name
        row.write(self.results_dir)
        self.rows.append(row)
        return row

    def failed_start(self, reason: str) -> ResultRow:
        """The row of a stack that did not start: the table lists it with this reason."""
        return self._finish(self._row("startup", status="failed", error=reason))

    @contextmanager
    def _kept_on_failure(self, row: ResultRow):
        """A stack that fails or dies while it is judged still leaves its accuracy row, as a FAIL."""
        try:
            yield
        except StackError as exc:
            row.status = "crashed" if self.stack is not None and self.stack.death() else "failed"
            row.error = str(exc)
            row.accuracy = {"verdict": "fail", "summary": f"{row.status}: {exc}"}
            self._finish(row)
            self.log(f"{self.spec.name} accuracy: {row.status}: {exc}")
            raise

    def not_applicable(self, kind: str, reason: str, point: LoadPoint | None = None) -> ResultRow:
        """A row saying the stack cannot run this test (or this load point of it), and why."""
        accuracy = {"verdict": "not_applicable", "summary": reason} if kind == "accuracy" else None
        where = {"load_point": point.describe()} if point else {}
        return self._finish(self._row(kind, status="not_applicable", error=reason, accuracy=accuracy, **where))

    def measure(self, endpoint: str, payloads: list[dict], point: LoadPoint, request_timeout_s: float,
                repeat: int = 0, slos_ms: dict[str, float] | None = None, guard: Guard | None = None,
                check: "OutputCheck | None" = None) -> ResultRow:
        """Run one load point over the transport `endpoint` names and write its row, also when the
        stack dies part-way or the run is interrupted (Ctrl-C, SIGTERM: the row keeps what finished).

        The stack's /metrics counters are read around the measured requests (warm-up excluded) and
        what moved is kept in the row. Metrics: the harness's (harness/metrics.py) and the
        scenario's own (its YAML's `metrics`). `guard`: an engagement guard, applied when the stack
        declares its feature; a cell that fails it is written with status "failed" and the guard's
        reason. `check`: judges the measured outputs (an OutputCheck against the text reference, or
        a scenario's own with the same `judge` method); a cell whose outputs fail is written with
        status "failed": its numbers are not those of a right answer.
        """
        unit = transport(endpoint).unit
        if unit != self.scenario.unit:
            raise HarnessError(f"setting {self.scenario.setting} counts {self.scenario.unit}, and the transport "
                               f"{endpoint!r} counts {unit}")
        row = self._row("performance", status="ok", load_point=point.describe(), repeat=repeat,
                        salt=repeat_salt(self.salt, repeat))
        payloads = [self.spec.adapt({**p, "model": self.served_model}) for p in payloads]
        reset = self.reset_prefix_cache(payloads, endpoint)
        row.stack_info["prefix_cache_reset"] = reset.status
        readings: list[counters.Counters | None] = []
        result = LoadResult.empty(point, len(payloads))
        self._machine_beside(row, point, "before")
        try:
            with progress_bar(f"{self.spec.name} {point.label}", len(result.records)) as tick:
                self._timed(lambda: asyncio.run(run_load_point(
                    self.stack.base_url, endpoint, payloads, point, request_timeout_s,
                    liveness=self.stack.death, progress=tick,
                    on_measured_start=lambda: readings.append(counters.read(self.stack.base_url)), result=result)),
                    point)
        except KeyboardInterrupt:
            result.interrupted = True
            result.mark_unfinished("interrupted")
            row.status, row.error = "interrupted", "the run was interrupted during this cell"
            row.metrics = summarize(result.records, slos_ms, self._metric_functions())
            self._finish(row, result.warmup_records + result.records)
            raise
        row.counters = counters.delta(readings[0] if readings else None, counters.read(self.stack.base_url))
        self._machine_beside(row, point, "after")
        row.metrics = summarize(result.records, slos_ms, self._metric_functions(), row.counters)
        if result.crashed:
            row.status, row.error = "crashed", result.crashed
        elif row.metrics["failed"]:
            row.status = "partial" if row.metrics["completed"] else "failed"
            row.error = next(r.error for r in result.records if r.error)
        if guard is not None and guard.applies(self.spec.supports):
            verdict = guard.check(row.metrics.get(guard.usage_key) if guard.usage_key else None, row.counters,
                                  row.metrics)
            row.engagement = verdict.to_json()
            if not verdict.ok and row.status == "ok":
                row.status, row.error = "failed", verdict.reason
        if not reset.ok and row.status in ("ok", "partial"):
            row.status, row.error = "failed", f"prefix cache: {reset.status}"
        if check is not None and not result.crashed:
            outputs = check.judge(self, result.records, f"{point.label}:{repeat}")
            row.outputs = outputs.to_json()
            if not outputs.ok and row.status in ("ok", "partial"):
                row.status, row.error = "failed", f"measured outputs: {outputs.summary}"
        self._finish(row, result.warmup_records + result.records)
        self._attach(row)
        self.log(self._cell_line(row))
        if result.crashed:
            raise StackError(result.crashed)
        return row

    def _machine_beside(self, row: ResultRow, point: LoadPoint, when: str) -> None:
        """The copy bandwidth a concurrency-1 cell's "bandwidth achieved" is judged against, and the
        cores' matmul speed, measured while the stack idles just before and after the cell: a
        neighbour's phase comes and goes within minutes, so readings taken around a whole run can
        miss the cell's machine, and a slow cell is told from a slow machine only beside it."""
        if self.copy_bandwidth and point.concurrency == 1:
            row.machine[f"copy_bandwidth_{when}"] = memory_bandwidth()
            row.machine[f"matmul_flops_{when}"] = matmul_speed()

    def _metric_functions(self) -> dict:
        return resolve_metrics(self.scenario.metrics)

    def _timed(self, run: Callable[[], object], point: LoadPoint) -> None:
        """The cell's requests, timed by pytest-benchmark as one round where a test asked for it
        (`benchmark`), so its compare and histogram tools see our cells; the row stays the truth."""
        if self.benchmark is None:
            run()
            return
        self.benchmark.group = f"{self.scenario.setting}-{self.profile} {point.label}"
        self.benchmark.pedantic(run, rounds=1, iterations=1)

    def _attach(self, row: ResultRow) -> None:
        if self.benchmark is not None:
            self.benchmark.extra_info.update(
                {"row": row.name, "status": row.status, "run_id": row.run_id, "stack": row.stack,
                 **{k: v for k, v in row.metrics.items() if isinstance(v, (int, float, str)) or v is None}})

    def _cell_line(self, row: ResultRow) -> str:
        """One line per cell: status, the scenario's leaderboard columns, load, outputs verdict."""
        board = self.scenario.leaderboard
        keys = dict.fromkeys((board.primary, *board.columns))
        shown = [f"{metric_label(k, board.labels)} {_fmt(row.metrics.get(k))}" for k in keys if k in row.metrics]
        return (f"{self.spec.name} {row.load_point['label']}: {row.status}, " + ", ".join(shown)
                + f", load {row.machine['loadavg_after']}"
                + (f", outputs {row.outputs['summary']}" if row.outputs else "")
                + (f"; {row.error}" if row.engagement and row.engagement["verdict"] == "fail" else ""))

    def collect(self, endpoint: str, payloads: list[dict], request_timeout_s: float) -> list[RequestRecord]:
        """Outputs of `payloads`, one request at a time over the transport `endpoint` names (an
        accuracy pass of a setting whose outputs are not text with logprobs). A dead stack raises
        StackError; a failed request is in its record, for the scenario's oracle to judge."""
        point = LoadPoint(num_prompts=len(payloads), concurrency=1)
        payloads = [self.spec.adapt({**p, "model": self.served_model}) for p in payloads]
        result = asyncio.run(run_load_point(self.stack.base_url, endpoint, payloads, point, request_timeout_s,
                                            liveness=self.stack.death))
        if result.crashed:
            raise StackError(result.crashed)
        return result.records

    def reset_prefix_cache(self, payloads: list[dict] = (), endpoint: str | None = None) -> ResetOutcome:
        """Start on a cold cache where the stack allows it (repeated runs would inflate); the reset
        is believed only where a probe, the longest of the text `payloads` (a short one may not fill
        a cache block), shows no hits after it (harness/prefix_cache.py)."""
        longest = max(payloads, key=lambda p: len(json.dumps(p)), default=None) if endpoint in ENDPOINTS else None
        return prefix_cache.reset_prefix_cache(self.stack.base_url, longest and prefix_cache.probe_from(longest),
                                               endpoint or "completions")

    def stack_outputs(self, prompts: list[Prompt], request_timeout_s: float, top_k: int = TOP_K,
                      stack: RunningStack | None = None) -> list[Generation]:
        """Greedy outputs with top-k logprobs from the stack (or `stack`, e.g. its variant with an
        optimisation off), one request at a time."""
        stack = stack or self.stack

        async def fetch() -> list[Generation]:
            out = []
            async with session(request_timeout_s) as client:
                for p in prompts:
                    out.append(await self._one(client, p, top_k, stack))
            return out
        return asyncio.run(fetch())

    async def _one(self, client, p: Prompt, top_k: int, stack: RunningStack) -> Generation:
        if p.chat:
            payload = {"model": self.served_model, "messages": [{"role": "user", "content": p.text}],
                       "max_tokens": p.max_tokens, "temperature": 0, "logprobs": True, "top_logprobs": top_k}
            if p.template_kwargs:
                payload["chat_template_kwargs"] = p.template_kwargs
        else:
            payload = {"model": self.served_model, "prompt": list(p.ids) if p.ids is not None else p.text,
                       "max_tokens": p.max_tokens, "temperature": 0, "logprobs": top_k}
            if p.ignore_eos:
                payload["ignore_eos"] = True
        if p.response_format:
            payload["response_format"] = p.response_format
        payload |= p.extra
        try:
            response = await post_json(client, stack.base_url, "chat" if p.chat else "completions",
                                       self.spec.adapt(payload))
        except (HTTPStatusError, MalformedStream, aiohttp.ClientError, TimeoutError) as exc:
            dead = stack.death(wait_s=2.0)
            detail = str(exc) or type(exc).__name__  # a timeout's message is empty
            raise StackError(dead or f"stack {stack.spec.name} failed on prompt {p.id}: {detail}") from None
        try:
            return from_openai(response, p.chat)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise StackError(f"stack {stack.spec.name} answered prompt {p.id} with a malformed response "
                             f"({type(exc).__name__}: {exc}): {str(response)[:200]}") from None

    def accuracy(self, prompts: list[Prompt], request_timeout_s: float, top_k: int = TOP_K,
                 reference_dir: Path | None = None) -> Verdict:
        """Judge the stack against the transformers reference on `prompts`; writes the accuracy row."""
        ref_dir = reference_dir or self.model_dir
        row = self._row("accuracy", status="ok")
        refs = reference_outputs(ref_dir, prompts, top_k, self.log)
        with self._kept_on_failure(row):
            gots = self.stack_outputs(prompts, request_timeout_s, top_k)
        verdict = read_on(judge([p.id for p in prompts], refs, gots, eos_strings(ref_dir)), ref_dir, prompts,
                          [g.text for g in gots], top_k)
        row.accuracy = verdict.to_json() | {"outputs": [g.text for g in gots]}
        row.status = "ok" if verdict.ok else "failed"
        self._finish(row)
        self.log(f"{self.spec.name} accuracy: {verdict.summary}")
        return verdict

    def judged_accuracy(self, verdict: Verdict, outputs: list | None = None) -> ResultRow:
        """Write the accuracy row of a scenario that judged its outputs itself (e.g. with
        `collect` and `judge_equal`); `outputs` are kept in the row as given (JSON-able)."""
        row = self._row("accuracy", status="ok" if verdict.ok else "failed")
        row.accuracy = verdict.to_json() | ({"outputs": outputs} if outputs is not None else {})
        self._finish(row)
        self.log(f"{self.spec.name} accuracy: {verdict.summary}")
        return row

    def lossless_accuracy(self, prompts: list[Prompt], request_timeout_s: float, top_k: int = TOP_K,
                          guard: Guard | None = None, report: Callable[[list[Generation]], dict] | None = None,
                          reference_dir: Path | None = None,
                          judge_outputs: Callable[[list[Generation]], Verdict] | None = None) -> LosslessVerdict:
        """The oracle of a lossless optimisation switched on by request fields (`Prompt.extra`).

        1. lossless: each prompt's output equals, token for token, its output with the optimisation
           off (strict; the verdict shows both top-k at a divergence). Off is, for a stack that
           declares `guard.feature`, what its spec's `off_switch` says (a relaunch with extra
           arguments, or request fields): dropping the request fields is not enough, since a stack
           may take its optimised path without them. A stack that declares the feature and no way to turn it
           off is judged on 2 and 3 only, and its verdict says so. For a stack that does not
           declare it (a baseline), off is the same requests without the fields;
        2. reference: the output with them matches the transformers reference (near-tie rule);
        3. engagement: where the stack declares `guard.feature`, the mechanism ran during pass 1
           (usage counts summed over the prompts, or /metrics counters grown).
        `report(outputs_on)` adds what is reported but not judged (e.g. similarity to gold);
        `judge_outputs(outputs_on)` is the setting's own judgement of them, which must pass too.
        A stack that does not declare the feature, on prompts with no request fields to drop, has
        no other side: one pass, judged on 2 (and `judge_outputs`) only.
        """
        ref_dir = reference_dir or self.model_dir
        row = self._row("accuracy", status="ok")
        refs = reference_outputs(ref_dir, [p.without_extra() for p in prompts], top_k, self.log)
        # Every pass starts on a cold prefix cache: otherwise a later pass reuses an earlier one's
        # K/V, computed in other chunks, and its bf16 rounding differs for a reason that is not the
        # optimisation under test (vanilla vLLM on an AMX CPU flipped 4 of 12 near-tied tokens so).
        resets = [self.reset_prefix_cache().status]
        claimed = guard.feature if guard is not None and guard.applies(self.spec.supports) else None
        with self._kept_on_failure(row):
            before = counters.read(self.stack.base_url)
            on = self.stack_outputs(prompts, request_timeout_s, top_k)
            moved = counters.delta(before, counters.read(self.stack.base_url))
            off, how = self._outputs_off(prompts, request_timeout_s, top_k, claimed, resets)
        row.stack_info["prefix_cache_reset"] = "; ".join(sorted(set(resets)))
        ids = [p.id for p in prompts]
        eos = eos_strings(ref_dir)
        verdict = LosslessVerdict(lossless=judge_lossless(ids, off, on, eos) if off is not None else None,
                                  reference=read_on(judge(ids, refs, on, eos), ref_dir, prompts,
                                                    [g.text for g in on], top_k), off=how,
                                  outputs=judge_outputs(on) if judge_outputs else None)
        if claimed is not None:
            used = [g.usage_details.get(guard.usage_key) for g in on] if guard.usage_key else []
            total = sum(u for u in used if isinstance(u, (int, float))) if any(u is not None for u in used) else None
            out = [g.usage_tokens if g.usage_tokens is not None else len(g.tokens) for g in on]
            verdict.engagement = guard.check(total, moved, {"total_output_tokens": sum(out), "completed": len(on)})
        row.counters = moved
        row.engagement = verdict.engagement.to_json() if verdict.engagement else None
        row.accuracy = verdict.to_json() | {"outputs": [g.text for g in on]} | ({"report": report(on)} if report else {})
        row.status = "ok" if verdict.ok else "failed"
        self._finish(row)
        self.log(f"{self.spec.name} accuracy: {verdict.summary}")
        return verdict

    def _outputs_off(self, prompts: list[Prompt], request_timeout_s: float, top_k: int, claimed: str | None,
                     resets: list[str]) -> tuple[list[Generation] | None, str]:
        """The lossless oracle's other side: outputs with the optimisation off, and how it was
        turned off (None and the reason where it cannot be)."""
        if claimed is None:
            fields = sorted({k for p in prompts for k in p.extra})
            if not fields:
                return None, "not applicable: the stack claims no such optimisation and the requests carry none"
            resets.append(self.reset_prefix_cache().status)
            return (self.stack_outputs([p.without_extra() for p in prompts], request_timeout_s, top_k),
                    f"the same requests without {', '.join(fields) or 'extra fields'}")
        switch = self.spec.off.get(claimed)
        if switch is None:
            return None, (f"not checked: the stack declares {claimed!r} and its spec has no `off_switch` for it "
                          f"(judged against the reference only)")
        if switch.request:
            resets.append(self.reset_prefix_cache().status)
            variant = [replace(p, extra={**p.extra, **switch.request}) for p in prompts]
            return self.stack_outputs(variant, request_timeout_s, top_k), f"{claimed} off: {switch.describe()}"
        spec = self.spec.with_off(claimed)
        self.log(f"{self.spec.name}: launching {spec.name} ({switch.describe()}) for the lossless check")
        log_dir = self.results_dir / "runs" / self.run_id / "logs"
        try:
            with launch(spec, self.model_dir or Path.cwd(), log_dir, scenario=self.scenario.name,
                        startup_timeout_s=self.startup_timeout_s) as variant:
                return (self.stack_outputs(prompts, request_timeout_s, top_k, stack=variant),
                        f"{claimed} off: {switch.describe()}")
        except HarnessError as exc:
            raise StackError(f"{spec.name} (the lossless check's other side): {exc}") from None


@dataclass
class OutputsVerdict:
    """The measured outputs of a cell that were judged, and how they fared."""

    verdict: Verdict
    judged: list[int]  # indexes of the measured requests judged (drawn after the cell)
    measured: int

    @property
    def ok(self) -> bool:
        return self.verdict.ok or not self.judged  # nothing to judge: every request failed, counted apart

    @property
    def summary(self) -> str:
        return f"{len(self.judged)} of {self.measured} judged: {self.verdict.summary}" if self.judged else "none judged"

    def to_json(self) -> dict:
        verdict = ("pass" if self.verdict.ok else "fail") if self.judged else "none"
        parts = getattr(self.verdict, "parts", None)  # several judgements (oracle.AllOf): each one's verdict
        return {"verdict": verdict, "summary": self.summary, "judged": self.judged,
                "prompts": [p.__dict__ for p in self.verdict.prompts]} | (
                    {"parts": {name: v.to_json() for name, v in parts.items()}} if parts else {})


@dataclass
class LosslessVerdict:
    """The three parts of a lossless-optimisation oracle; all must pass."""

    lossless: Verdict | None  # None: not checked (the stack declares no way to turn the optimisation off)
    reference: Verdict
    off: str = ""  # what the outputs were compared with: how the optimisation was turned off
    engagement: GuardResult | None = None  # None: the stack does not claim the optimisation
    outputs: Verdict | None = None  # the setting's own judgement of the outputs (e.g. schema validity)

    @property
    def ok(self) -> bool:
        lossless = self.lossless is None or self.lossless.ok
        return (lossless and self.reference.ok and (self.engagement is None or self.engagement.ok)
                and (self.outputs is None or self.outputs.ok))

    @property
    def summary(self) -> str:
        lossless = f"lossless ({self.off}): {self.lossless.summary}" if self.lossless else f"lossless {self.off}"
        parts = [lossless, f"reference: {self.reference.summary}"]
        if self.outputs is not None:
            parts.append(f"outputs: {self.outputs.summary}")
        if self.engagement is not None:
            parts.append("engagement: " + ("pass" if self.engagement.ok else self.engagement.reason))
        return "; ".join(parts)

    def failures(self) -> list[str]:
        out = [f"lossless {p.prompt_id}: {p.reason}" for p in (self.lossless.prompts if self.lossless else ()) if not p.ok]
        out += [f"reference {p.prompt_id}: {p.reason}" for p in self.reference.prompts if not p.ok]
        out += [f"outputs {p.prompt_id}: {p.reason}" for p in (self.outputs.prompts if self.outputs else ()) if not p.ok]
        if self.engagement is not None and not self.engagement.ok:
            out.append(self.engagement.reason)
        return out

    def to_json(self) -> dict:
        lossless = self.lossless.to_json() if self.lossless else {"verdict": "not_checked", "summary": self.off}
        return {"verdict": "pass" if self.ok else "fail", "summary": self.summary,
                "lossless": lossless | {"off": self.off}, "reference": self.reference.to_json(),
                "engagement": self.engagement.to_json() if self.engagement else None} | (
                    {"outputs_judged": self.outputs.to_json()} if self.outputs is not None else {})


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.1f}"
