"""python -m skills.mlx_image.selfcheck --model DIR --requests FILE --out FILE.npz: draw each
request ({"ids": [...], "seed": n, "steps": n, "guidance": g}) with text K/V reuse on, off, and on
with the compiled fused-math step, and save the images (`on-i`, `off-i`, `compiled-i`), the counters
and fused_math's error, for tests/skills/test_mlx_image.py to judge against the torch plain loop (it
runs in the harness's environment, which has no MLX)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .denoiser import MlxDenoiser


def fused_math_error() -> dict[str, float]:
    """The largest error of each fused_math function against MLX's own over [-30, 30]: relative for
    exp, absolute for the bounded ones."""
    import mlx.core as mx

    from . import fused_math

    x = mx.linspace(-30.0, 30.0, 200_200)
    ref = {"exp": mx.exp(x), "sigmoid": mx.sigmoid(x), "silu": x * mx.sigmoid(x), "tanh": mx.tanh(x),
           "softmax": mx.softmax(x.reshape(-1, 1001), axis=-1)}
    got = {name: mx.compile(getattr(fused_math, name))(x.reshape(-1, 1001) if name == "softmax" else x) for name in ref}
    err = {name: mx.abs(got[name] - ref[name]) / (ref[name] if name == "exp" else 1.0) for name in ref}
    return {name: mx.max(e).item() for name, e in err.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--requests", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    requests = json.loads(args.requests.read_text())
    images = {}
    for mode, reuse, compiled in (("on", True, False), ("off", False, False), ("compiled", True, True)):
        engine = MlxDenoiser(args.model, reuse_text_kv=reuse, compiled=compiled)
        for i, r in enumerate(requests):
            images[f"{mode}-{i}"] = engine.generate(r["ids"], r["seed"], r["steps"], r["guidance"])
        images[f"counters-{mode}"] = np.array(json.dumps(engine.counters()))
    images["fused-math-error"] = np.array(json.dumps(fused_math_error()))
    np.savez(args.out, **images)


if __name__ == "__main__":
    main()
