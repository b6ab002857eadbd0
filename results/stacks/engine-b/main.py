"""engine-b: setting B's stack (code editing with predicted outputs), composed from
skills/engine_core + skills/speculative_decoding + skills/openai_server.

python results/stacks/engine-b/main.py --model DIR --port P [knobs]

Greedy requests are decoded by speculation: each step verifies the last token plus up to K
draft tokens (looked up in the request's `prediction`, prompt and own output) in one forward
and keeps the longest prefix the model agrees with plus its own next token. With the native
kernels (skills/cpu_kernels) every row is computed alone, the same at any row count; without
them every step of a speculating request has one fixed shape (K + 1 rows, keys in whole
512-blocks). Either way the output does not depend on what was drafted: with or without a
prediction it is token for token the same.
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

# Concurrency 1: few slots; one prefill chunk holds a whole bug-fix prompt (a few hundred tokens).
# Outputs go to the server 8 at a time after the first (QueueStream): each hand-over wakes the
# event loop on the cores a step runs on (skills/engine_core NOTE.md).
DEFAULTS = {"max_num_seqs": 4, "max_num_batched_tokens": 1024, "max_model_len": 4096, "dtype": "bfloat16",
            "few_row_matmul": "auto", "stream_interval": 8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = engine_arguments(__doc__, DEFAULTS)
    spec = p.add_argument_group("speculative decoding (skills/speculative_decoding/NOTE.md)")
    spec.add_argument("--no-spec", action="store_true", help="off: one token per step, predictions ignored")
    spec.add_argument("--num-speculative-tokens", type=int, default=None,
                      help="K: draft tokens verified per forward (default: 12 where verify steps run on AMX tiles, "
                           "small_gemm's or oneDNN's, whose cost is flat in the rows, else 6, with shorter drafts "
                           "after weak matches; skills/speculative_decoding AUTO_K, AUTO_UNSURE)")
    spec.add_argument("--adaptive-k", action="store_true",
                      help="grow K after full acceptance, shrink it after a rejection (default: always K)")
    spec.add_argument("--no-prediction", action="store_true", help="ignore `prediction` (prompt lookup only)")
    spec.add_argument("--no-ngram", action="store_true",
                      help="draft from the prediction only (not from the prompt or the output so far)")
    spec.add_argument("--key-block", type=int, default=512,
                      help="without the native kernels, the fixed verify shape: keys read in blocks of this many "
                           "(0: exact keys and 1 + len(draft) rows, but bf16 rounding then depends on the draft)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from skills.speculative_decoding import SpecConfig, Speculator

    # The fused kernels are per-row, so a verify row's numerics still do not depend on the chunk
    # (checked by tests/skills/test_speculative_decoding.py with them on).
    speculator = None
    if not args.no_spec:
        speculator = Speculator(SpecConfig(num_speculative_tokens=args.num_speculative_tokens or 6,
                                           use_prediction=not args.no_prediction, ngram=not args.no_ngram,
                                           key_block=args.key_block, adaptive=args.adaptive_k),
                                auto_k=args.num_speculative_tokens is None)
    serve_engine("engine-b", args, speculator)


if __name__ == "__main__":
    main()
