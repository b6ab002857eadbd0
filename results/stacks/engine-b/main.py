"""engine-b: setting B's stack (code editing with predicted outputs), composed from
skills/engine_core + skills/speculative_decoding + skills/openai_server.

python results/stacks/engine-b/main.py --model DIR --port P [knobs]

Greedy requests are decoded by speculation: each step verifies the last token plus K draft
tokens (from the request's `prediction`, else prompt lookup) in one forward and keeps the
longest prefix the model agrees with plus its own next token. Every step of a speculating
request has the same shape (K + 1 rows, keys in whole 512-blocks), so the output does not
depend on what was drafted: with or without a prediction it is token for token the same.
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
import logging  # noqa: E402
import time  # noqa: E402

# Concurrency 1: few slots; one prefill chunk holds a whole bug-fix prompt (a few hundred tokens).
DEFAULTS = {"max_num_seqs": 4, "max_num_batched_tokens": 1024, "max_model_len": 4096, "dtype": "bfloat16",
            "num_speculative_tokens": 8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--max-num-seqs", type=int, default=DEFAULTS["max_num_seqs"])
    p.add_argument("--max-num-batched-tokens", type=int, default=DEFAULTS["max_num_batched_tokens"])
    p.add_argument("--max-model-len", type=int, default=DEFAULTS["max_model_len"])
    p.add_argument("--dtype", default=DEFAULTS["dtype"], choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--native-kernels", action=argparse.BooleanOptionalAction, default=True,
                   help="fused C++ norms, rope, SwiGLU and decode attention (skills/cpu_kernels); built once per machine")
    p.add_argument("--omp-spincount", default=None,
                   help="GOMP_SPINCOUNT: how long idle OpenMP threads spin before sleeping (engine_core NOTE.md)")
    spec = p.add_argument_group("speculative decoding (skills/speculative_decoding/NOTE.md)")
    spec.add_argument("--no-spec", action="store_true", help="off: one token per step, predictions ignored")
    spec.add_argument("--num-speculative-tokens", type=int, default=DEFAULTS["num_speculative_tokens"],
                      help="K: draft tokens verified per forward")
    spec.add_argument("--adaptive-k", action="store_true",
                      help="grow K after full acceptance, shrink it after a rejection (default: always K)")
    spec.add_argument("--no-prediction", action="store_true", help="ignore `prediction` (prompt lookup only)")
    spec.add_argument("--no-ngram", action="store_true", help="no prompt-lookup fallback")
    spec.add_argument("--key-block", type=int, default=512,
                      help="fixed verify shape: keys read in blocks of this many (0: exact keys and 1 + len(draft) "
                           "rows: faster when drafts are short, but bf16 rounding then depends on the draft)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.omp_spincount is not None:  # read by libgomp when torch loads it, so before the import
        os.environ["GOMP_SPINCOUNT"] = str(args.omp_spincount)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from skills.engine_core import EngineConfig, load_engine
    from skills.engine_core.kernels import Kernels
    from skills.openai_server import ServerInfo, serve
    from skills.speculative_decoding import SpecConfig, Speculator

    cfg = EngineConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                       max_model_len=args.max_model_len, dtype=args.dtype, threads=args.threads)
    # The fused kernels are per-row, so a verify row's numerics still do not depend on the chunk
    # (checked by tests/skills/test_speculative_decoding.py with them on).
    if args.native_kernels and not Kernels.use_native():
        logging.getLogger("engine-b").warning("native kernels unavailable: running the eager torch kernels")
    speculator = None
    if not args.no_spec:
        speculator = Speculator(SpecConfig(num_speculative_tokens=args.num_speculative_tokens,
                                           use_prediction=not args.no_prediction, ngram=not args.no_ngram,
                                           key_block=args.key_block, adaptive=args.adaptive_k))
    engine = load_engine(args.model, cfg, speculator)
    engine.start()
    info = ServerInfo(args.served_model_name or args.model.resolve().name, str(args.model), int(time.time()),
                      server_name="engine-b")
    serve(engine, info, args.host, args.port)


if __name__ == "__main__":
    main()
