"""engine-f: setting F's stack (text-to-image with the text's keys and values reused across
denoising steps), composed from skills/image_model + skills/text_kv_reuse + skills/image_server.

python results/stacks/engine-f/main.py --model DIR --port P [--threads N] [--cfg-stride K]
                                       [--text-kv-reuse on|off] [--null-text-cache on|off] [--compile on|off]
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


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a showo2 model folder (skills/image_model)")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: every core)")
    p.add_argument("--text-kv-reuse", choices=["on", "off"], default="on",
                   help="off: every step runs the whole sequence (the plain loop), all else the same (default: on)")
    p.add_argument("--null-text-cache", choices=["on", "off"], default="on",
                   help="off: the null text's keys and values per request instead of once at load (default: on)")
    p.add_argument("--compile", choices=["on", "off"], default="off",
                   help="on: each step through torch.compile (inductor), compiled at load (default: off)")
    p.add_argument("--cfg-stride", type=int, default=1,
                   help="run the null row every K-th step and reuse its last velocity between (approximate; "
                        "default: %(default)s, exact guidance)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cfg_stride < 1:
        sys.exit(f"engine-f: --cfg-stride must be at least 1, got {args.cfg_stride}")
    from transformers import AutoTokenizer

    from skills.image_model import load, tokenizer_dir
    from skills.image_server import serve
    from skills.text_kv_reuse import Denoiser, DenoiserConfig

    config = DenoiserConfig(reuse_text_kv=args.text_kv_reuse == "on", cache_null_text=args.null_text_cache == "on",
                            cfg_stride=args.cfg_stride, compile=args.compile == "on")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(args.model))
    serve(lambda: Denoiser(load(args.model, args.threads), tokenizer, config), args.served_model_name or "engine-f",
          args.host, args.port)


if __name__ == "__main__":
    main()
