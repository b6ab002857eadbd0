"""python -m baselines.hf_reference --model DIR --port P [--host H] [--dtype D] [--device D] [--threads N]
[--served-model-name NAME]: a server over plain transformers generate, chosen by the model folder's
config.json model_type: a speech model (moonshine_streaming) gets the streaming ASR server
(skills/asr_server, a full recompute per chunk), the text-to-image model (showo2) the image server
(skills/image_server, the plain sampling loop), any other the OpenAI-compatible one."""

from __future__ import annotations

import os

# Before transformers is imported: this server never talks to a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from harness.machine import usable_cpus  # noqa: E402

SPEECH_MODEL_TYPES = ("moonshine_streaming",)
IMAGE_MODEL_TYPES = ("showo2",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m baselines.hf_reference", description=__doc__)
    parser.add_argument("--model", required=True, type=Path, help="a local transformers model folder")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                        help="auto: the dtype in the model's config")
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=len(usable_cpus()),
                        help="torch intra-op threads (default: the CPUs this process may run on)")
    parser.add_argument("--served-model-name", default=None, help="default: the model folder's name")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (args.model / "config.json").is_file():
        sys.exit(f"hf-reference: {args.model} is not a model folder (no config.json)")

    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger(__name__).info("%d torch threads", args.threads)
    name = args.served_model_name or args.model.resolve().name
    if _model_type(args.model) in SPEECH_MODEL_TYPES:
        _serve_speech(args, name)
    elif _model_type(args.model) in IMAGE_MODEL_TYPES:
        _serve_images(args, name)
    else:
        _serve_text(args, name)


def _model_type(model_dir: Path) -> str | None:
    return json.loads((model_dir / "config.json").read_text()).get("model_type")


def _serve_speech(args: argparse.Namespace, name: str) -> None:
    from skills.asr_server import serve

    from .asr import FullRecompute, load_speech_model

    serve(FullRecompute(load_speech_model(args.model, args.dtype, args.device)), name, args.host, args.port)


def _serve_images(args: argparse.Namespace, name: str) -> None:
    from skills.image_server import serve

    from .image import PlainLoop

    serve(lambda: PlainLoop(args.model, args.threads), name, args.host, args.port)


def _serve_text(args: argparse.Namespace, name: str) -> None:
    from skills.openai_server import ServerInfo, serve

    from .generator import Generator
    from .loader import load_model

    generator = Generator(load_model(args.model, args.dtype, args.device))
    info = ServerInfo(name, str(args.model), int(time.time()), server_name="hf-reference")
    serve(generator, info, args.host, args.port)


if __name__ == "__main__":
    main()
