"""What every stack's main.py built on this engine shares: the engine's flags and the start-up
(native kernels, engine, OpenAI server). A stack adds its own flags and passes its defaults.

    p = engine_arguments(description, {"max_num_seqs": 32, ...})
    args = p.parse_args()
    serve_engine("engine-a", args, speculator=None)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .row_invariance import CHOICES


def engine_arguments(description: str | None, defaults: dict) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--max-num-seqs", type=int, default=defaults["max_num_seqs"])
    p.add_argument("--max-num-batched-tokens", type=int, default=defaults["max_num_batched_tokens"])
    p.add_argument("--max-model-len", type=int, default=defaults["max_model_len"])
    p.add_argument("--dtype", default=defaults["dtype"], choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--compile", default=defaults.get("compile", ""),
                   help="comma-separated skills/engine_core/kernels.py names to torch.compile ('' for none)")
    p.add_argument("--native-kernels", action=argparse.BooleanOptionalAction, default=True,
                   help="skills/cpu_kernels: fused C++ norms, rope, SwiGLU, row attention, few-row matmul and the "
                        "C++ layer loop; built once per machine")
    p.add_argument("--few-row-matmul", default=defaults.get("few_row_matmul", "small_gemm"), choices=CHOICES,
                   help="with the native kernels, the matmul of decode and verify steps: small_gemm (row-invariant "
                        "by construction; on AMX tiles where the CPU has them), onednn, or auto (oneDNN where the CPU "
                        "has AMX that small_gemm cannot use, else small_gemm); with "
                        "speculation, kept only where verify steps equal one-token decodes at load "
                        "(skills/engine_core/row_invariance.py, step_invariance.py)")
    p.add_argument("--small-gemm-rows", type=rows_or_auto, default=defaults.get("small_gemm_rows"),
                   help="where small_gemm is the few-row matmul, steps of more rows take oneDNN: a row count, or "
                        "auto (8 on a CPU with AMX that small_gemm cannot use, where oneDNN is faster from ~10 "
                        "rows; else all up to 32); default: all up to 32")
    p.add_argument("--idle-gather-ms", type=float, default=defaults.get("idle_gather_ms", 0.0),
                   help="an idle engine that receives a request waits until none has followed for this long "
                        "(at most 10 times it) before its first step, so a burst is prefilled together (0: off)")
    p.add_argument("--stream-interval", type=int, default=defaults.get("stream_interval", 1),
                   help="after a request's first token, hand its tokens to the server this many at a time "
                        "(one SSE chunk each; vLLM's --stream-interval)")
    p.add_argument("--greedy-screen", action=argparse.BooleanOptionalAction, default=defaults.get("greedy_screen", True),
                   help="greedy decode steps of up to 4 rows that ask no logprobs pick their tokens with an int8 "
                        "screen of the lm_head and recompute only the candidates (the same tokens, bit for bit; "
                        "skills/cpu_kernels/greedy_head.cpp)")
    p.add_argument("--omp-spincount", default=None,
                   help="GOMP_SPINCOUNT: how long idle OpenMP threads spin before sleeping (engine_core NOTE.md)")
    return p


def rows_or_auto(text: str) -> int | str:
    """--small-gemm-rows: "auto" or a row count >= 0."""
    if text != "auto" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"a row count or auto, not {text!r}")
    return text if text == "auto" else int(text)


def serve_engine(name: str, args: argparse.Namespace, speculator=None, **config) -> None:
    """Build the engine the flags describe (plus `config`: other EngineConfig fields) and serve it."""
    if args.omp_spincount is not None:  # read by libgomp when torch loads it, so before the import
        os.environ["GOMP_SPINCOUNT"] = str(args.omp_spincount)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from skills.openai_server import ServerInfo, serve

    from .engine import EngineConfig, LLMEngine
    from .kernels import Kernels
    from .loader import load_engine

    cfg = EngineConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                       max_model_len=args.max_model_len, dtype=args.dtype, threads=args.threads,
                       compile=tuple(n for n in args.compile.split(",") if n),
                       few_row_matmul=args.few_row_matmul, small_gemm_rows=args.small_gemm_rows,
                       idle_gather_s=args.idle_gather_ms / 1e3,
                       stream_interval=args.stream_interval, greedy_screen=args.greedy_screen, **config)
    if args.native_kernels and not Kernels.use_native():
        logging.getLogger(name).warning("native kernels unavailable: running the eager torch kernels")
    # Loaded, warmed up and stepped on one thread (see LLMEngine.start_on_own_thread).
    engine = LLMEngine.start_on_own_thread(lambda: load_engine(args.model, cfg, speculator))
    info = ServerInfo(args.served_model_name or args.model.resolve().name, str(args.model), int(time.time()),
                      server_name=name)
    serve(engine, info, args.host, args.port)
