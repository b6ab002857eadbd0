"""Drive a stack with one load point: open-loop arrivals or closed-loop concurrency, over the
transport the scenario names (harness/transports)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.arrivals import arrival_offsets
from harness.client import session
from harness.records import RequestRecord
from harness.transports import Transport, transport


@dataclass(frozen=True)
class LoadPoint:
    """One cell of a sweep. Give `request_rate` (open loop) or `concurrency` (closed loop)."""

    num_prompts: int
    request_rate: float | None = None
    burstiness: float = 1.0
    max_concurrency: int | None = None  # cap on in-flight requests for open loop
    concurrency: int | None = None  # closed loop: this many clients, each sends after its last finished
    warmup: int = 0
    seed: int = 0
    # The scenario's own keys of this point in its YAML (e.g. a tail length its workload sweeps):
    # the harness only shows them in the label and the row.
    params: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # `supports` words a stack must declare for this point, beyond its test's

    @property
    def label(self) -> str:
        own = "".join(f",{k}={v}" for k, v in self.params.items())
        if self.concurrency:
            return f"conc={self.concurrency}{own}"
        cap = f",cap={self.max_concurrency}" if self.max_concurrency else ""
        return f"rate={self.request_rate if self.request_rate is not None else 'inf'}{cap}{own}"

    def describe(self) -> dict:
        return {"label": self.label, "request_rate": self.request_rate, "burstiness": self.burstiness,
                "max_concurrency": self.max_concurrency, "concurrency": self.concurrency,
                "num_prompts": self.num_prompts, "warmup": self.warmup, "seed": self.seed, **self.params} | (
                    {"needs": list(self.needs)} if self.needs else {})


@dataclass
class LoadResult:
    records: list[RequestRecord]  # measured requests only, in send order
    warmup_records: list[RequestRecord]
    started: float  # perf_counter at the start of the measured window
    crashed: str | None = None  # the stack's death report, if it died during the point
    interrupted: bool = False  # stopped part-way (Ctrl-C, SIGTERM): what finished is kept
    extra: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, point: LoadPoint, n_payloads: int) -> "LoadResult":
        """The records a point fills in place, so a caller keeps them when the point is interrupted."""
        warm = min(point.warmup, n_payloads)
        return cls(records=[RequestRecord(index=i) for i in range(n_payloads - warm)],
                   warmup_records=[RequestRecord(index=i, warmup=True) for i in range(warm)], started=0.0)

    def mark_unfinished(self, reason: str) -> None:
        """Requests that never finished fail with `reason`, so no half-streamed one counts as done."""
        for rec in self.records:
            if rec.error is None and (not rec.events or rec.finish_reason is None):
                rec.error = reason if rec.sent_at is not None else f"never sent: {reason}"


Liveness = Callable[[], str | None]  # None while the stack lives, else why it died
Progress = Callable[[RequestRecord], None]


async def _watch(liveness: Liveness, interval_s: float = 0.5) -> str:
    while True:
        dead = liveness()
        if dead:
            return dead
        await asyncio.sleep(interval_s)


async def _open_loop(client, base_url, way: Transport, payloads, point, records, progress) -> None:
    offsets = arrival_offsets(len(payloads), point.request_rate, point.burstiness, point.seed)
    slots = asyncio.Semaphore(point.max_concurrency) if point.max_concurrency else None
    start = time.perf_counter()

    async def one(i: int) -> None:
        delay = start + offsets[i] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queued = time.perf_counter()
        if slots:
            await slots.acquire()
        try:
            rec = records[i]
            rec.client_queue_time = time.perf_counter() - queued
            rec.sent_at = time.perf_counter() - start
            await way.send(client, base_url, payloads[i], rec)
            progress(rec)
        finally:
            if slots:
                slots.release()

    await asyncio.gather(*(one(i) for i in range(len(payloads))))


async def _closed_loop(client, base_url, way: Transport, payloads, point, records, progress) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(payloads)):
        queue.put_nowait(i)
    start = time.perf_counter()

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            records[i].sent_at = time.perf_counter() - start
            await way.send(client, base_url, payloads[i], records[i])
            progress(records[i])

    await asyncio.gather(*(worker() for _ in range(point.concurrency or 1)))


async def run_load_point(base_url: str, endpoint: str, payloads: list[dict], point: LoadPoint,
                         request_timeout_s: float, liveness: Liveness = lambda: None,
                         progress: Progress = lambda _: None,
                         on_measured_start: Callable[[], object] = lambda: None,
                         result: LoadResult | None = None) -> LoadResult:
    """Send the warm-up requests, then the measured ones; stop early if the stack dies.

    `endpoint` names the transport (harness/transports). `payloads` holds warm-up payloads first
    (point.warmup of them), then the measured ones. `on_measured_start` runs (blocking, outside the
    window) between the two, e.g. to read counters. `result`: records to fill in place (see
    LoadResult.empty), which the caller still holds if the point is interrupted.
    """
    way = transport(endpoint)
    result = result or LoadResult.empty(point, len(payloads))
    warm, measured = payloads[: len(result.warmup_records)], payloads[len(result.warmup_records):]
    records = result.records
    async with session(request_timeout_s) as client:
        for payload, rec in zip(warm, result.warmup_records):
            await way.send(client, base_url, payload, rec)
        await asyncio.to_thread(on_measured_start)
        drive = _closed_loop if point.concurrency else _open_loop
        result.started = time.perf_counter()
        work = asyncio.ensure_future(drive(client, base_url, way, measured, point, records, progress))
        watch = asyncio.ensure_future(_watch(liveness))
        try:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, watch):  # interrupted: stop sending, keep what finished
                if not task.done():
                    task.cancel()
        if watch in done:
            result.crashed = watch.result()
            await asyncio.gather(work, return_exceptions=True)
        else:
            work.result()
            # Requests to a dead server fail fast, so the load may end before the watcher looks.
            result.crashed = liveness()
    if result.crashed:
        result.mark_unfinished("the stack died before the request finished")
    return result
