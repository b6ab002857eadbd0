"""engine-a: setting A's stack, composed from skills/engine_core + skills/openai_server.

python results/stacks/engine-a/main.py --model DIR --port P [knobs]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The checkout holding skills/: above this file, else the working directory (the harness launches
# every stack, also a copy of this one kept elsewhere, from the repository root).
ROOT = next((p for p in Path(__file__).resolve().parents if (p / "skills" / "__init__.py").is_file()), Path.cwd())
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402

from skills.engine_core.stack_main import engine_arguments, serve_engine  # noqa: E402

# The knobs, measured on setting A's tiny profile (2 shared CPU cores); see skills/engine_core/NOTE.md.
# bf16 beats fp32 (AVX-512 BF16); compiled kernels did not pay; 32 slots hold all 24 requests of
# the rate-8 point at once; threads default to every core (--threads 1 is ~10% faster when
# another process keeps a core busy). A step's budget of 2048 tokens (vLLM-CPU's default for its
# server) prefills a burst of prompts in one step, and an idle engine gathers a burst for 2 ms
# before its first step (rate=inf, one A/B run each: budget 256 -> 512, 453 -> 480 tok/s; the 2 ms
# gather, 453 -> 484 tok/s and p99 TTFT 391 -> 338 ms; skills/engine_core/NOTE.md). Tokens go to
# the server 4 at a time after a request's first: each chunk woke the event loop and the client on
# the cores the step runs on (concurrency 1, two A/B runs: 96.0 -> 126.6 and 95.3 -> 109.1 tok/s).
# On a CPU with AMX, decode steps of more than 8 rows take oneDNN instead of small_gemm (Intel Xeon,
# in-process, 16 rows: 340 and 368 -> 449 and 502 tok/s; 1 row unchanged; skills/engine_core/NOTE.md).
DEFAULTS = dict(max_num_seqs=32, max_num_batched_tokens=2048, max_model_len=4096, dtype="bfloat16", compile="",
                idle_gather_ms=2.0, stream_interval=4, small_gemm_rows="auto")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = engine_arguments(__doc__, DEFAULTS)
    p.add_argument("--output-sync-ms", type=float, default=0.0,
                   help="wait up to this long after a step for the event loop to take its outputs (0: off)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    serve_engine("engine-a", args, output_sync_s=args.output_sync_ms / 1e3)


if __name__ == "__main__":
    main()
