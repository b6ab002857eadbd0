"""What a stack's main.py needs: the engine's flags and the start-up (engine thread, OpenAI server).

    args = engine_arguments(description, DEFAULTS).parse_args()
    serve_engine("engine-c", args)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def engine_arguments(description: str | None, defaults: dict) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="an olmo_hybrid model folder (safetensors)")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--max-num-seqs", type=int, default=defaults["max_num_seqs"],
                   help="sequences running at once (default: %(default)s)")
    p.add_argument("--max-num-batched-tokens", type=int, default=defaults["max_num_batched_tokens"],
                   help="rows per forward: one per decode, the rest prompt chunks (default: %(default)s)")
    p.add_argument("--max-model-len", type=int, default=defaults["max_model_len"])
    p.add_argument("--threads", type=int, default=defaults.get("threads"), help="torch threads (default: every core)")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="the optimisation off: nothing looked up, restored or stored; every other computation the same")
    p.add_argument("--state-block", type=int, default=defaults["state_block"],
                   help="snapshot the GatedDeltaNet states every this many prompt tokens (default: %(default)s)")
    p.add_argument("--cache-mb", type=int, default=defaults["cache_mb"],
                   help="prefix cache budget, K/V segments + snapshots, in MiB (default: %(default)s)")
    p.add_argument("--wait-for-shared", type=int, default=defaults["wait_for_shared"],
                   help="admission waits for a running prefill sharing this many more prompt tokens than the cache "
                        "holds; 0: never (default: %(default)s)")
    p.add_argument("--native-kernels", action=argparse.BooleanOptionalAction, default=True,
                   help="skills/hybrid_engine/kernels.cpp (split invariant, built once per machine); else torch")
    p.add_argument("--stream-interval", type=int, default=defaults.get("stream_interval", 1),
                   help="after a request's first token, send its tokens this many to a chunk (and at its end); "
                        "fewer chunks leave more of the cores to the engine (default: %(default)s)")
    p.add_argument("--greedy-head", action=argparse.BooleanOptionalAction, default=True,
                   help="greedy requests without logprobs: the argmax from a screen of the lm_head and an fp32 "
                        "recheck of the tokens it cannot rule out, equal to the fp32 head's (greedy_head.py)")
    p.add_argument("--greedy-screen", choices=["int8", "bf16"], default="int8",
                   help="the greedy head's screen: int8 (AVX-512 VNNI; a quarter of the fp32 head's bytes) or bf16 "
                        "(AVX-512 BF16; half); int8 falls back to bf16 on a CPU without VNNI (default: %(default)s)")
    p.add_argument("--layer-loop", action=argparse.BooleanOptionalAction, default=True,
                   help="with the C++ kernels, run the decoder layers as one C++ call (the same kernels in the same "
                        "order, so the same bits) rather than a Python call per kernel")
    p.add_argument("--min-rows", type=int, default=0,
                   help="pad matmuls to at least this many rows; 0: the row counts checked bit-stable at load")
    return p


def engine_config(args: argparse.Namespace):
    from .config import EngineConfig

    return EngineConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                        max_model_len=args.max_model_len, threads=args.threads, native_kernels=args.native_kernels,
                        prefix_cache=not args.no_prefix_cache, state_block=args.state_block,
                        cache_bytes=args.cache_mb << 20, wait_for_shared=args.wait_for_shared, min_rows=args.min_rows,
                        stream_interval=args.stream_interval, greedy_head=args.greedy_head,
                        greedy_screen=args.greedy_screen,
                        layer_loop=args.layer_loop)


def serve_engine(name: str, args: argparse.Namespace) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from skills.openai_server import ServerInfo, serve

    from .engine import HybridEngine
    from .loader import load_engine

    cfg = engine_config(args)
    # Loaded, checked, warmed up and stepped on one thread (one OpenMP team).
    engine = HybridEngine.start_on_own_thread(lambda: load_engine(args.model, cfg))
    info = ServerInfo(args.served_model_name or Path(args.model).resolve().name, str(args.model), int(time.time()),
                      server_name=name)
    serve(engine, info, args.host, args.port)


__all__ = ["engine_arguments", "engine_config", "serve_engine"]
