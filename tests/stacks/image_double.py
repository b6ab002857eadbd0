"""Test-double stack for setting F: the real tiny text-to-image model behind skills/image_server,
through the plain loop, with one fault put in on purpose (`--mode`):

- `honest`: the plain loop's image (what the reference draws);
- `fixed`: the image of the first request it served, for every request after;
- `other-seed`: the image of the request's seed + 1 (right prompt, other noise);
- `noise`: uniform random pixels from the seed, of the right size;
- `claims-reuse`: honest images, but the spec declares text_kv_reuse and /metrics shows none.

    python tests/stacks/image_double.py --model DIR --port P --mode MODE
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from baselines.hf_reference.image import PlainLoop  # noqa: E402
from skills.image_server import serve  # noqa: E402

MODES = ("honest", "fixed", "other-seed", "noise", "claims-reuse")


class Faulty(PlainLoop):
    def __init__(self, model_dir: Path, mode: str):
        super().__init__(model_dir)
        self.mode = mode
        self._first: np.ndarray | None = None

    def generate(self, token_ids, seed, steps, guidance):
        if self.mode == "noise":
            size = self.image_size
            return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
        if self.mode == "fixed" and self._first is not None:
            return self._first
        image = super().generate(token_ids, seed + 1 if self.mode == "other-seed" else seed, steps, guidance)
        self._first = image if self._first is None else self._first
        return image


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mode", choices=MODES, default="honest")
    args = p.parse_args()
    serve(lambda: Faulty(args.model, args.mode), f"image-{args.mode}", args.host, args.port)


if __name__ == "__main__":
    main()
