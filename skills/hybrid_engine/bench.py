"""Setting C's workload in-process: a warm-up request, then N concurrent requests sharing a long
prefix with unique tails; aggregate output tok/s with the prefix cache on and off, step times.

    python -m skills.hybrid_engine.bench [--prefix 3456] [--tail 128] [--requests 8] [--output 128]
        [--threads N] [--modes on,off]

Prints one line per mode, checks that every mode produced the same tokens, and the load average.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass, field

from skills.engine_core.loader import default_threads

from .config import EngineConfig


@dataclass
class Run:
    mode: str
    wall_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)
    prefill_steps: list[tuple[float, int]] = field(default_factory=list)  # (seconds, prompt rows)
    decode_steps: list[tuple[float, int]] = field(default_factory=list)  # (seconds, decode rows)

    def line(self, n_out: int) -> str:
        p = self.prefill_steps
        d = self.decode_steps
        mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
        return (f"{self.mode:>9}: {n_out / self.wall_s:7.1f} output tok/s ({self.wall_s:.2f} s), "
                f"TTFT mean {mean(self.ttft_s):.2f} s, cached {self.cached}; "
                f"{len(p)} steps with prompt rows ({sum(r for _, r in p)} rows, {1e3 * mean([t for t, _ in p]):.0f} ms "
                f"each), {len(d)} decode-only steps ({1e3 * mean([t for t, _ in d]):.1f} ms at "
                f"{mean([r for _, r in d]):.1f} rows)")


def workload(prefix: int, tail: int, requests: int, seed: int = 0) -> tuple[list[int], list[list[int]]]:
    rng = random.Random(seed)
    ids = lambda n: [rng.randrange(100, 49000) for _ in range(n)]  # noqa: E731
    shared = ids(prefix)
    return shared + ids(tail + 5), [shared + ids(tail) for _ in range(requests)]


def measure(model_dir, cfg: EngineConfig, warm: list[int], prompts: list[list[int]], n_out: int, mode: str) -> Run:
    from skills.engine_api import SamplingParams

    from .loader import load_engine

    engine = load_engine(model_dir, cfg)
    params = SamplingParams(max_tokens=n_out, temperature=0.0, ignore_eos=True)
    engine.add_request(warm, params, lambda outs: None)
    engine.run_until_idle()
    run = Run(mode)
    outs: list[list] = [[] for _ in prompts]
    started = time.perf_counter()
    first: list[float | None] = [None] * len(prompts)
    for i, prompt in enumerate(prompts):
        engine.add_request(prompt, params, outs[i].extend)
    while engine.scheduler.has_work() or not engine._inbox.empty():
        t0 = time.perf_counter()
        if not engine.step():
            continue
        dt = time.perf_counter() - t0
        step = engine.last_step
        rows = sum(c.length for c in step.prefills)
        (run.prefill_steps if rows else run.decode_steps).append((dt, rows or len(step.decodes)))
        now = time.perf_counter() - started
        for i, out in enumerate(outs):
            if out and first[i] is None:
                first[i] = now
    run.wall_s = time.perf_counter() - started
    run.ttft_s = [f or 0.0 for f in first]
    run.outputs = [[o.token_id for o in out if o.token_id is not None] for out in outs]
    run.cached = [out[0].cached_tokens for out in outs]
    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="olmo_hybrid folder (default: the tiny profile's)")
    p.add_argument("--prefix", type=int, default=3456)
    p.add_argument("--tail", type=int, default=128)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--output", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--modes", default="on,off",
                   help="runs in turn: on / off (the prefix cache), each with -python for the layers called from "
                        "Python, kernel by kernel, instead of the C++ layer loop, -bf16 for the greedy head's bf16 "
                        "screen instead of int8, -fp32 for the fp32 head (e.g. on,on-bf16,on-python-fp32)")
    args = p.parse_args(argv)
    if args.model is None:
        from harness.assets import ensure_model

        args.model = ensure_model("olmo-hybrid-tiny")
    warm, prompts = workload(args.prefix, args.tail, args.requests)
    runs = []
    for mode in args.modes.split(","):
        cache, *variant = mode.split("-")
        cfg = EngineConfig(max_num_seqs=max(16, args.requests), max_num_batched_tokens=args.max_num_batched_tokens,
                           threads=args.threads, prefix_cache=cache == "on", layer_loop="python" not in variant,
                           greedy_head="fp32" not in variant, greedy_screen="bf16" if "bf16" in variant else "int8")
        runs.append(measure(args.model, cfg, warm, prompts, args.output, mode))
        print(runs[-1].line(args.requests * args.output), flush=True)
    if len(runs) == 2:
        print(f"{runs[0].mode} / {runs[1].mode}: {runs[1].wall_s / runs[0].wall_s:.2f}x")
    print(f"outputs equal: {all(run.outputs == runs[0].outputs for run in runs)}")
    print(f"load average {os.getloadavg()}, {args.threads or default_threads()} threads")


if __name__ == "__main__":
    main()
