"""A short profile of the stack for the planner: where the time goes, read from the benchmark's numbers,
plus a py-spy stack dump of the server under load when py-spy is installed."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.evaluator import Measurement
    from agent.objective import Objective

# Read alongside the objective's own columns, when the rows have them.
EXTRA = ("request_throughput", "median_ttft_ms", "median_tpot_ms", "median_e2el_ms", "duration",
         "total_output_tokens", "completed")


def summarize(m: "Measurement", objective: "Objective") -> str:
    """Plain sentences: offered vs served load, queueing (TTFT) vs per-token cost (TPOT)."""
    x = m.metrics
    lines = [f"{objective.metric} = {m.value:.2f} at {m.load_point.get('label', 'the load point')} "
             f"({objective.direction} is better)"]
    rate, served = m.load_point.get("request_rate"), x.get("request_throughput")
    if rate and served:
        state = "saturated: requests arrive faster than it serves them" if served < 0.9 * rate else "keeping up"
        lines.append(f"offered {rate:g} req/s, served {served:.2f} req/s ({state})")
    ttft, tpot = x.get("median_ttft_ms"), x.get("median_tpot_ms")
    if ttft is not None and tpot is not None:
        if tpot > 0 and ttft > 10 * tpot:
            lines.append(f"TTFT p50 {ttft:.0f} ms is {ttft / tpot:.0f}x TPOT p50 {tpot:.1f} ms: requests wait in a "
                         f"queue; serving several at once (batching) or faster prefill attacks this")
        else:
            lines.append(f"TTFT p50 {ttft:.0f} ms, TPOT p50 {tpot:.1f} ms: per-step cost dominates; a cheaper decode "
                         f"step (dtype, threads, less Python per token) attacks this")
    if not shutil.which("py-spy"):
        lines.append("(py-spy is not installed: no stack samples; `pip install py-spy` adds them)")
    return "\n".join(lines)


def spy_dump(pid: int, timeout_s: float = 30) -> str:
    """One py-spy dump of a running server: the Python stacks of its threads right now."""
    if not shutil.which("py-spy"):
        return ""
    try:
        out = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(py-spy dump failed: {exc})"
    return (out.stdout or out.stderr)[-3000:]


def dump_under_load(base_url: str, pid: int, model: str, requests: int = 4, max_tokens: int = 32) -> str:
    """Send a few concurrent completions and take a py-spy dump while they run."""
    if not shutil.which("py-spy"):
        return ""
    import httpx

    async def drive() -> str:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"model": model, "prompt": "Count slowly from one to fifty:", "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": True}
            sends = [asyncio.create_task(client.post(base_url + "/v1/completions", json=body))
                     for _ in range(requests)]
            await asyncio.sleep(0.5)
            dump = await asyncio.to_thread(spy_dump, pid)
            await asyncio.gather(*sends, return_exceptions=True)
            return dump

    return asyncio.run(drive())
