"""A soak of a served stack: rounds of streamed completions of mixed lengths, some cancelled after
their first chunk, some abandoned by a client that vanishes right after sending, on loopback.
Each round reports errors, the latency of the requests read to their end, and the resident memory
of the stack's whole session; at the end the stack must have nothing running or waiting (no slot
leaked) and still answer a request.

    python -m harness soak --stack STACK --scenario SETTING [--rounds 8] [--per-round 250] [--concurrency 8]
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

from harness import procfs
from harness.launcher import RunningStack
from harness.machine import loadavg

PROMPT_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "quietly", "judge", "boxing"]


@dataclass
class Round:
    index: int
    sent: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # the requests read to their end
    cancelled: int = 0
    vanished: int = 0
    rss_mb: float = 0.0
    load: list[float] = field(default_factory=list)

    def p(self, q: float) -> float | None:
        xs = sorted(self.latencies_ms)
        return xs[int(q * (len(xs) - 1))] if xs else None


def session_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the stack's session (its process group), in MiB."""
    return procfs.rss_mib(procfs.group(pgid))


def _payload(rng: random.Random, model: str) -> dict:
    words = rng.choices(PROMPT_WORDS, k=rng.choice([1, 8, 64, 256]))
    return {"model": model, "prompt": " ".join(words), "max_tokens": rng.choice([1, 4, 16, 64]), "temperature": 0,
            "stream": True}


async def _request(client: aiohttp.ClientSession, url: str, payload: dict, how: str, rnd: Round) -> None:
    started = time.perf_counter()
    try:
        if how == "vanish":  # the client is gone before any answer
            task = asyncio.ensure_future(client.post(url, json=payload))
            await asyncio.sleep(0.005)
            task.cancel()
            rnd.vanished += 1
            return
        async with client.post(url, json=payload) as response:
            if response.status != 200:
                rnd.errors.append(f"HTTP {response.status}: {(await response.text())[:200]}")
                return
            async for line in response.content:
                if how == "cancel" and line.startswith(b"data: {"):
                    rnd.cancelled += 1
                    return  # closing the response drops the connection mid-stream
                if line.strip() == b"data: [DONE]":
                    rnd.latencies_ms.append((time.perf_counter() - started) * 1000)
                    return
            rnd.errors.append("the stream ended without [DONE]")
    except (aiohttp.ClientError, TimeoutError) as exc:
        rnd.errors.append(f"{type(exc).__name__}: {exc}")


async def _round(stack: RunningStack, model: str, index: int, per_round: int, concurrency: int,
                 rng: random.Random) -> Round:
    rnd = Round(index)
    url = stack.base_url + "/v1/completions"
    gate = asyncio.Semaphore(concurrency)

    async def one(payload: dict, how: str) -> None:
        async with gate:
            await _request(client, url, payload, how, rnd)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as client:
        jobs = [one(_payload(rng, model), rng.choices(["read", "cancel", "vanish"], [8, 1, 1])[0])
                for _ in range(per_round)]
        rnd.sent = len(jobs)
        await asyncio.gather(*jobs)
    return rnd


def soak(stack: RunningStack, model: str, rounds: int, per_round: int, concurrency: int, seed: int = 0,
         report=print) -> tuple[list[Round], dict]:
    """Run the rounds; returns them and the stack's state at the end (its /metrics, a last request)."""
    rng = random.Random(seed)
    done = []
    for i in range(rounds):
        rnd = asyncio.run(_round(stack, model, i, per_round, concurrency, rng))
        rnd.rss_mb, rnd.load = session_rss_mb(stack.process.pid), loadavg()
        done.append(rnd)
        report(f"round {i}: {rnd.sent} sent, {len(rnd.latencies_ms)} read to the end, {rnd.cancelled} cancelled, "
               f"{rnd.vanished} vanished, {len(rnd.errors)} errors; latency p50 {rnd.p(0.5) or 0:.0f} ms, "
               f"p99 {rnd.p(0.99) or 0:.0f} ms; RSS {rnd.rss_mb:.0f} MiB; load {rnd.load}"
               + (f"; first error: {rnd.errors[0]}" if rnd.errors else ""))
    time.sleep(1.0)  # cancelled requests are reaped by the engine's next step
    end = {"metrics": httpx.get(stack.base_url + "/metrics", timeout=10).json()}
    last = httpx.post(stack.base_url + "/v1/completions", timeout=60,
                      json={"model": model, "prompt": "one more", "max_tokens": 4, "temperature": 0})
    end["last_request"] = last.status_code
    return done, end


def run(stack_name: str, scenario_name: str, profile: str, scenarios_dir: Path, results_dir: Path, rounds: int,
        per_round: int, concurrency: int) -> None:
    """The command: launch the stack on the scenario profile's model, soak it, print a verdict line;
    HarnessError where anything failed, leaked or stopped answering."""
    from harness.errors import HarnessError
    from harness.launcher import launch_on

    with launch_on(stack_name, scenario_name, profile, scenarios_dir, results_dir / "soak" / "logs") as (stack, _):
        before = session_rss_mb(stack.process.pid)
        served = httpx.get(stack.base_url + "/v1/models", timeout=10).json()["data"][0]["id"]
        print(f"{stack_name} up, serving {served}; RSS {before:.0f} MiB; load {loadavg()}")
        done, end = soak(stack, served, rounds, per_round, concurrency)
    errors = sum(len(r.errors) for r in done)
    print(f"end: {errors} errors in {sum(r.sent for r in done)} requests; RSS {before:.0f} -> {done[-1].rss_mb:.0f} MiB "
          f"(after round 0: {done[0].rss_mb:.0f}); p99 first/last round {done[0].p(0.99) or 0:.0f}/"
          f"{done[-1].p(0.99) or 0:.0f} ms; /metrics at the end {end['metrics']}; a last request: HTTP {end['last_request']}")
    held = {k: v for k, v in end["metrics"].items() if k in ("requests_running", "requests_waiting") and v}
    if errors or held or end["last_request"] != 200:
        raise HarnessError(f"soak failed: {errors} errors, still held {held or 'nothing'}, "
                           f"a last request HTTP {end['last_request']}")
