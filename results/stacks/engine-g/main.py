"""engine-g: setting G's stack (the text-to-image model ported to MLX, with the text's keys and
values reused across denoising steps), composed from skills/mlx_image + skills/image_server. Runs
in the mlx-lm engine environment (mlx[cpu] on Linux, OpenBLAS preloaded).

python results/stacks/engine-g/main.py --model DIR --port P [--text-kv-reuse on|off] [--compile on|off]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = next((p for p in Path(__file__).resolve().parents if (p / "skills" / "__init__.py").is_file()), Path.cwd())
sys.path.insert(0, str(ROOT))


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a showo2 model folder (skills/image_model)")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--text-kv-reuse", choices=["on", "off"], default="on",
                   help="off: every step runs the whole sequence (the plain loop in MLX) (default: on)")
    p.add_argument("--compile", choices=["on", "off"], default="on",
                   help="on: each step one mx.compile'd graph, built at start-up, and exp/sigmoid/tanh as fused "
                        "arithmetic (skills/mlx_image/fused_math) (default: on)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from skills.image_server import serve
    from skills.mlx_image import MlxDenoiser

    serve(lambda: MlxDenoiser(args.model, reuse_text_kv=args.text_kv_reuse == "on", compiled=args.compile == "on"),
          args.served_model_name or "engine-g", args.host, args.port)


if __name__ == "__main__":
    main()
