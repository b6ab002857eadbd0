"""engine-e: setting E's stack (JSON-schema constrained decoding on MLX), composed from
skills/mlx_runtime + skills/structured_output + skills/openai_server.

python results/stacks/engine-e/main.py --model MLX_DIR --port P [--dtype float32] [--no-jump-forward]

Runs in the mlx-lm engine environment (mlx, mlx-lm, llguidance, fastapi, uvicorn).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The checkout holding skills/: above this file, else the working directory (the harness launches
# every stack from the repository root).
ROOT = next((p for p in Path(__file__).resolve().parents if (p / "skills" / "__init__.py").is_file()), Path.cwd())
sys.path.insert(0, str(ROOT))

from skills.mlx_runtime import EngineConfig, MlxEngine  # noqa: E402

DEFAULTS = EngineConfig()


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="an MLX (or Hugging Face safetensors) Llama model folder")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--dtype", default=DEFAULTS.dtype, choices=("float32", "bfloat16", "float16"),
                   help="weights and compute (default: %(default)s; bf16 matmuls on the CPU are MLX's own, slower)")
    p.add_argument("--max-rows", type=int, default=DEFAULTS.max_rows,
                   help="tokens per forward of a jump-forward chunk (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="OpenBLAS threads (default: the library's, one per core)")
    p.add_argument("--no-jump-forward", action="store_true",
                   help="the optimisation off: every token, forced or not, gets its own forward; all else the same")
    return p


def set_blas_threads(threads: int) -> None:
    """OpenBLAS (preloaded by the environment, so loaded before Python) read OPENBLAS_NUM_THREADS at
    start-up: set the count through its API instead. Before the engine loads, so its row-invariance
    calibration sees the threading it will run with."""
    import ctypes

    setter = getattr(ctypes.CDLL(None), "openblas_set_num_threads", None)
    if setter is None:
        logging.getLogger(__name__).warning("--threads ignored: the BLAS in this process is not OpenBLAS")
        return
    setter(int(threads))


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        set_blas_threads(args.threads)
    from skills.openai_server import ServerInfo, serve

    cfg = EngineConfig(dtype=args.dtype, jump_forward=not args.no_jump_forward, max_rows=args.max_rows,
                       threads=args.threads)
    engine = MlxEngine.load(args.model, cfg)
    info = ServerInfo(args.served_model_name or "engine-e", str(args.model), int(time.time()), server_name="engine-e")
    serve(engine, info, args.host, args.port)


if __name__ == "__main__":
    main()
