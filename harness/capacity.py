"""The load generator's own ceiling: how many streamed requests per second it sends and reads back
from a server that answers at once (one token, its usage, [DONE]), on this machine's cores; and its
clock's error under a concurrent load: streams of one token per chunk every `token_ms`, each chunk
stamped by the server as it is written, on the host's one monotonic clock, against the time the
harness records for it.

A stack faster than this would be measured at the harness's speed, not its own; the numbers go
next to any throughput or latency claim. The server is aiohttp in a process of its own, which
shares the cores with the client, as a real stack on the same machine does.

    python -m harness capacity [--requests 3000] [--concurrency 64] [--clock-concurrency 1,8,32]
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import platform
import statistics
import time
from contextlib import contextmanager

from harness.errors import HarnessError
from harness.launcher import free_port
from harness.loadgen import LoadPoint, run_load_point
from harness.machine import loadavg, usable_cpus

CHUNK = {"id": "c", "object": "text_completion", "model": "noop",
         "choices": [{"index": 0, "text": " x", "logprobs": None, "finish_reason": "length"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
TOKEN = {"id": "c", "object": "text_completion", "model": "noop",
         "choices": [{"index": 0, "text": " x", "logprobs": None, "finish_reason": None}]}


def _serve(port: int, failed) -> None:
    """The no-op server on `port`; a start it cannot make goes to `failed` as one line, not a traceback."""
    from aiohttp import web

    stamps: dict[str, dict] = {}  # prompt -> when its request was read, and when each chunk was written

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        tokens, token_s = int(body.get("max_tokens") or 1), float(body.get("token_ms") or 0) / 1000
        if tokens == 1 and not token_s:
            await response.write(f"data: {json.dumps(CHUNK)}\n\ndata: [DONE]\n\n".encode())
            return response
        stamp = stamps[str(body.get("prompt"))] = {"received": time.perf_counter(), "chunks": []}
        start = time.perf_counter()
        for k in range(tokens):
            await asyncio.sleep(max(0.0, start + (k + 1) * token_s - time.perf_counter()))
            stamp["chunks"].append(time.perf_counter())
            await response.write(f"data: {json.dumps(TOKEN)}\n\n".encode())
        usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
        await response.write(f"data: {json.dumps(CHUNK | {'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        return response

    async def read_stamps(_: web.Request) -> web.Response:
        out = dict(stamps)
        stamps.clear()
        return web.json_response(out)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    app.router.add_get("/stamps", read_stamps)
    try:
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    except OSError as error:  # e.g. the port taken meanwhile
        failed.put(str(error))
        raise SystemExit(1) from None


@contextmanager
def _server():
    """The server in a process of its own; yields its base URL."""
    import httpx

    port = free_port()
    spawn = multiprocessing.get_context("spawn")
    failed = spawn.SimpleQueue()
    server = spawn.Process(target=_serve, args=(port, failed), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            server.join(0.05)
            if not server.is_alive():
                why = f": {failed.get()}" if not failed.empty() else ""
                raise HarnessError(f"the no-op server exited (code {server.exitcode}) before it answered on "
                                   f"{base}{why}")
        else:
            raise HarnessError(f"the no-op server did not answer {base}/health within 10 s")
        yield base
    finally:
        server.kill()
        server.join(5)


def _machine(load_before) -> dict:
    return {"cpus": len(usable_cpus()), "cpu": platform.processor() or platform.machine(), "load_before": load_before,
            "load_after": loadavg()}


def _quantiles(values: list[float]) -> dict:
    ranked = sorted(values)
    return {"p50": statistics.median(ranked), "p99": ranked[int(0.99 * (len(ranked) - 1))], "max": ranked[-1]}


def measure(requests: int = 3000, concurrency: int = 64) -> dict:
    """Requests per second the load generator completed, and its requests' latency (ms)."""
    with _server() as base:
        warmup = min(100, requests)
        payloads = [{"model": "noop", "prompt": f"p{i}", "max_tokens": 1} for i in range(warmup + requests)]
        load_before = loadavg()
        result = asyncio.run(run_load_point(base, "completions", payloads,
                                            LoadPoint(num_prompts=requests, concurrency=concurrency, warmup=warmup), 30))
    done = [r for r in result.records if r.ok]
    ends = [r.sent_at + r.events[-1].t for r in done]
    window = max(ends) - min(r.sent_at for r in done) if done else 0.0
    latency = _quantiles([r.events[-1].t * 1000 for r in done]) if done else {}
    return {"requests": requests, "concurrency": concurrency, "completed": len(done),
            "failed": len(result.records) - len(done), "req_per_s": len(done) / window if window else 0.0,
            "latency_p50_ms": latency.get("p50"), "latency_p99_ms": latency.get("p99")} | _machine(load_before)


def clock_error(concurrency: int, requests: int = 64, tokens: int = 32, token_ms: float = 20.0) -> dict:
    """How late the harness's clock reads each streamed chunk, against the server's stamp of its
    write (ms: p50, p99, max over every chunk), and how long a request took from the harness's send
    stamp to the server having read it, at `concurrency` streams at once."""
    import httpx

    with _server() as base:
        payloads = [{"model": "noop", "prompt": f"clock{i}", "max_tokens": tokens, "token_ms": token_ms}
                    for i in range(1 + requests)]
        load_before = loadavg()
        result = asyncio.run(run_load_point(base, "completions", payloads,
                                            LoadPoint(num_prompts=requests, concurrency=concurrency, warmup=1), 60))
        stamps = httpx.get(base + "/stamps", timeout=10).json()
    done = [(r, stamps[p["prompt"]]) for r, p in zip(result.records, payloads[1:]) if r.ok and p["prompt"] in stamps]
    read = [(r.clock + e.t - written) * 1000 for r, s in done for e, written in zip(r.unit_events, s["chunks"])]
    sent = [(s["received"] - r.clock) * 1000 for r, s in done]
    return {"concurrency": concurrency, "requests": requests, "completed": len(done),
            "chunks": len(read), "chunks_per_s": len(read) / max(max(r.sent_at + r.e2el for r, _ in done), 1e-9),
            "read_late_ms": _quantiles(read), "send_to_read_ms": _quantiles(sent)} | _machine(load_before)
