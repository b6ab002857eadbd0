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
import logging  # noqa: E402
import time  # noqa: E402

# The knobs, measured on setting A's tiny profile (2 shared CPU cores); see skills/engine_core/NOTE.md.
# bf16 beats fp32 (AVX-512 BF16); compiled kernels did not pay; 32 slots hold all 24 requests of
# the rate-8 point at once; threads default to every core (--threads 1 is ~10% faster when
# another process keeps a core busy).
DEFAULTS = dict(max_num_seqs=32, max_num_batched_tokens=256, max_model_len=4096, dtype="bfloat16", compile="")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--max-num-seqs", type=int, default=DEFAULTS["max_num_seqs"])
    p.add_argument("--max-num-batched-tokens", type=int, default=DEFAULTS["max_num_batched_tokens"])
    p.add_argument("--max-model-len", type=int, default=DEFAULTS["max_model_len"])
    p.add_argument("--dtype", default=DEFAULTS["dtype"], choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--compile", default=DEFAULTS["compile"],
                   help="comma-separated skills/engine_core/kernels.py names to torch.compile ('' for none)")
    p.add_argument("--native-kernels", action=argparse.BooleanOptionalAction, default=True,
                   help="fused C++ norms, rope, SwiGLU and decode attention (skills/cpu_kernels); built once per machine")
    p.add_argument("--output-sync-ms", type=float, default=0.0,
                   help="wait up to this long after a step for the event loop to take its outputs (0: off)")
    p.add_argument("--omp-spincount", default=None,
                   help="GOMP_SPINCOUNT: how long idle OpenMP threads spin before sleeping (see NOTE.md)")
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

    cfg = EngineConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                       max_model_len=args.max_model_len, dtype=args.dtype, threads=args.threads,
                       compile=tuple(n for n in args.compile.split(",") if n),
                       output_sync_s=args.output_sync_ms / 1e3)
    if args.native_kernels and not Kernels.use_native():
        logging.getLogger("engine-a").warning("native kernels unavailable: running the eager torch kernels")
    engine = load_engine(args.model, cfg)
    engine.start()
    info = ServerInfo(args.served_model_name or args.model.resolve().name, str(args.model), int(time.time()),
                      server_name="engine-a")
    serve(engine, info, args.host, args.port)


if __name__ == "__main__":
    main()
