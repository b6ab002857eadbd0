"""python -m skills.engine_core.bench [--model DIR] [--dtype bfloat16] [--tokens 128] [--batch-sizes 1,8,32] [--no-native]
    [--few-row-matmul small_gemm|onednn|auto] [--prompt-tokens N]

Concurrency-1 decode speed and "bandwidth achieved" (model bytes x tokens/s, as gpt-fast prints
it) against the machine's memory bandwidth, measured in the same run by a large array copy.
With --batch-sizes, also decode tokens/s at those batch sizes. The default prompt is one sentence;
`--prompt-tokens 550` decodes after a prompt of setting A's length, as a served cell does (each
step then also reads the prompt's K/V, which "bandwidth achieved" does not count).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from harness.bandwidth import memory_bandwidth  # noqa: E402
from skills.engine_api import SamplingParams  # noqa: E402

from .engine import EngineConfig, LLMEngine  # noqa: E402
from .kernels import Kernels  # noqa: E402
from .loader import default_threads, load_engine  # noqa: E402
from .row_invariance import CHOICES  # noqa: E402
from .stack_main import rows_or_auto  # noqa: E402


def model_bytes(engine: LLMEngine) -> int:
    """Weights as loaded, read once per decode step (a tied embedding counts once: it is the lm_head)."""
    return engine.runner.model.weight_bytes


def decode_rate(engine: LLMEngine, batch: int, tokens: int, prompt: list[int]) -> tuple[float, float]:
    """(decode tokens/s over all sequences, mean step seconds) after every prompt is prefilled."""
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    for _ in range(batch):
        engine.add_request(prompt, params, lambda outs: None)
    while any(s.prefilling for s in engine.scheduler.slots) or not engine.scheduler.slots:
        engine.step()
    before = engine.counters.snapshot()
    started = time.perf_counter()
    engine.run_until_idle()
    elapsed = time.perf_counter() - started
    after = engine.counters.snapshot()
    steps = after["forward_passes"] - before["forward_passes"]
    return (after["decode_tokens_total"] - before["decode_tokens_total"]) / elapsed, elapsed / max(steps, 1)


def long_prompt(tokenizer, n: int) -> list[int]:
    """n tokens of prose, the standard library's own module docs: a sentence repeated to length decoded
    slower than text (SmolLM2, Ice Lake Xeon, 550 tokens: 14.0-14.3 against 13.6-13.7 ms a step)."""
    import json
    import unittest

    ids = tokenizer("\n\n".join(m.__doc__ for m in (json, argparse, unittest))).input_ids
    if n > len(ids):
        raise SystemExit(f"--prompt-tokens: at most {len(ids)} here")
    return ids[:n]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="default: the tiny profile's SmolLM2-135M-Instruct")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tokens", type=int, default=128, help="tokens decoded per sequence")
    p.add_argument("--batch-sizes", default="1", help="comma-separated decode batch sizes")
    p.add_argument("--prompt-tokens", type=int, default=None,
                   help="the prompt's length, cut from prose (default: one sentence, ~12 tokens); a decode step also "
                        "reads the K/V of every token before it (setting A's prompts: ~450-650 tokens)")
    p.add_argument("--compile", default="", help="comma-separated kernels.py names to torch.compile")
    p.add_argument("--few-row-matmul", default="small_gemm", choices=CHOICES,
                   help="the matmul of steps of up to 32 rows (row_invariance.py; engine-a's default: small_gemm)")
    p.add_argument("--small-gemm-rows", type=rows_or_auto, default=None,
                   help="a row count or auto (EngineConfig.small_gemm_rows)")
    p.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                   help="the fused C++ kernels of skills/cpu_kernels (engine-a's default)")
    args = p.parse_args(argv)
    if args.model is None:
        from harness.assets import ensure_model

        args.model = Path(ensure_model("smollm2-135m-instruct"))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    cfg = EngineConfig(max_num_seqs=max(sizes), max_num_batched_tokens=max(256, max(sizes)),
                       max_model_len=max(1024, (args.prompt_tokens or 0) + args.tokens + 8),
                       dtype=args.dtype, threads=args.threads, few_row_matmul=args.few_row_matmul,
                       small_gemm_rows=args.small_gemm_rows,
                       compile=tuple(n for n in args.compile.split(",") if n))
    native = Kernels.use_native(args.native)
    engine = load_engine(args.model, cfg)
    prompt = engine.tokenizer("Write a short story about a robot who learns to paint.").input_ids
    if args.prompt_tokens:
        prompt = long_prompt(engine.tokenizer, args.prompt_tokens)
    decode_rate(engine, 1, 8, prompt)  # warm-up
    bandwidth = memory_bandwidth()
    size = model_bytes(engine)
    cores = default_threads()
    print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'default')}, "
          f"{'native' if native else 'eager'} kernels, few-row matmul {engine.runtime['few_row_matmul']} "
          f"(up to {engine.runtime['small_gemm_rows']} rows); "
          f"model {size / 1e6:.0f} MB ({args.dtype}); prompt {len(prompt)} tokens")
    print(f"memory bandwidth (copy, read+write): {bandwidth / 1e9:.1f} GB/s")
    for batch in sizes:
        rate, step_s = decode_rate(engine, batch, args.tokens, prompt)
        line = f"batch {batch:3d}: {rate:8.1f} tok/s, {step_s * 1e3:6.1f} ms/step"
        if batch == 1:
            achieved = size * rate
            line += (f"; bandwidth achieved {achieved / 1e9:.1f} GB/s = "
                     f"{100 * achieved / bandwidth:.0f}% of the measured memory bandwidth")
        print(line)


if __name__ == "__main__":
    main()
