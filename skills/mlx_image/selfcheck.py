"""python -m skills.mlx_image.selfcheck --model DIR --requests FILE --out FILE.npz: draw each
request ({"ids": [...], "seed": n, "steps": n, "guidance": g}) with text K/V reuse on and off, and
save the images (`on-i`, `off-i`) and the counters, for tests/skills/test_mlx_image.py to judge
against the torch plain loop (it runs in the harness's environment, which has no MLX)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .denoiser import MlxDenoiser


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--requests", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    requests = json.loads(args.requests.read_text())
    images = {}
    for mode, reuse in (("on", True), ("off", False)):
        engine = MlxDenoiser(args.model, reuse_text_kv=reuse)
        for i, r in enumerate(requests):
            images[f"{mode}-{i}"] = engine.generate(r["ids"], r["seed"], r["steps"], r["guidance"])
        images[f"counters-{mode}"] = np.array(json.dumps(engine.counters()))
    np.savez(args.out, **images)


if __name__ == "__main__":
    main()
