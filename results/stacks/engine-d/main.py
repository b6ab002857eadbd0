"""engine-d: setting D's stack (streaming speech recognition with a per-stream encoder cache),
composed from skills/asr_engine + skills/encoder_cache + skills/asr_server.

python results/stacks/engine-d/main.py --model DIR --port P [knobs] [--no-encoder-cache]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The checkout holding skills/: above this file, else the working directory (the harness launches
# every stack from the repository root).
ROOT = next((p for p in Path(__file__).resolve().parents if (p / "skills" / "__init__.py").is_file()), Path.cwd())
sys.path.insert(0, str(ROOT))

from skills.asr_engine import AsrEngine, EngineConfig, load_engine  # noqa: E402

DEFAULTS = EngineConfig()  # the stack.yaml command sets the values it was tuned with (its knobs section)


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a moonshine_streaming model folder (safetensors)")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--max-streams", type=int, default=DEFAULTS.max_streams,
                   help="streams whose chunks share the encoder's and decoder's forwards (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on the engine thread (default: every core)")
    p.add_argument("--no-encoder-cache", action="store_true",
                   help="the optimisation off: every chunk re-encodes its stream's whole buffer; all else the same")
    p.add_argument("--no-draft", action="store_true", help="restarted decodes do not verify the previous partial")
    p.add_argument("--draft-slack", type=int, default=DEFAULTS.draft_slack,
                   help="draft at most what the stream's last verify accepted plus this many tokens "
                        "(default: %(default)s)")
    p.add_argument("--lookup-tokens", type=int, default=DEFAULTS.lookup_tokens,
                   help="decode steps draft up to this many tokens by lookup over the previous partial and the output "
                        "(default: %(default)s)")
    p.add_argument("--lookup-rows", type=int, default=DEFAULTS.lookup_rows,
                   help="lookup drafts only while a decode step has at most this many rows (default: %(default)s)")
    p.add_argument("--no-screened-head", action="store_true",
                   help="greedy tokens from the plain fp32 LM head instead of a bf16 screen + fp32 candidates")
    return p


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from skills.asr_server import serve

    cfg = EngineConfig(max_streams=args.max_streams, threads=args.threads, encoder_cache=not args.no_encoder_cache,
                       draft=not args.no_draft, draft_slack=args.draft_slack, lookup_tokens=args.lookup_tokens,
                       lookup_rows=args.lookup_rows, screened_head=not args.no_screened_head)
    # Loaded, warmed up and stepped on one thread (one OpenMP team).
    engine = AsrEngine.start_on_own_thread(lambda: load_engine(args.model, cfg))
    serve(engine, args.served_model_name or "engine-d", args.host, args.port)


if __name__ == "__main__":
    main()
