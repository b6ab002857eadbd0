"""The load generator's own ceiling: how many streamed requests per second it sends and reads back
from a server that answers at once (one token, its usage, [DONE]), on this machine's cores.

A stack faster than this would be measured at the harness's speed, not its own; the number goes
next to any throughput claim. The server is aiohttp in a process of its own, which shares the
cores with the client, as a real stack on the same machine does.

    python -m harness capacity [--requests 3000] [--concurrency 64]
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import statistics

from harness.launcher import free_port
from harness.loadgen import LoadPoint, run_load_point
from harness.machine import loadavg

CHUNK = {"id": "c", "object": "text_completion", "model": "noop",
         "choices": [{"index": 0, "text": " x", "logprobs": None, "finish_reason": "length"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _serve(port: int) -> None:
    from aiohttp import web

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {json.dumps(CHUNK)}\n\ndata: [DONE]\n\n".encode())
        return response

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def measure(requests: int = 3000, concurrency: int = 64) -> dict:
    """Requests per second the load generator completed, and its requests' latency (ms)."""
    import httpx

    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
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
        warmup = min(100, requests)
        payloads = [{"model": "noop", "prompt": f"p{i}", "max_tokens": 1} for i in range(warmup + requests)]
        load_before = loadavg()
        result = asyncio.run(run_load_point(base, "completions", payloads,
                                            LoadPoint(num_prompts=requests, concurrency=concurrency, warmup=warmup), 30))
    finally:
        server.kill()
        server.join(5)
    done = [r for r in result.records if r.ok]
    ends = [r.sent_at + r.events[-1].t for r in done]
    window = max(ends) - min(r.sent_at for r in done) if done else 0.0
    latency = sorted(r.events[-1].t * 1000 for r in done)
    return {"requests": requests, "concurrency": concurrency, "completed": len(done),
            "failed": len(result.records) - len(done), "req_per_s": len(done) / window if window else 0.0,
            "latency_p50_ms": statistics.median(latency) if latency else None,
            "latency_p99_ms": latency[int(0.99 * (len(latency) - 1))] if latency else None,
            "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "load_before": load_before, "load_after": loadavg()}
