"""skills/mlx_image: the MLX port draws, from the same weights, prompt and seed, the image the
torch plain loop draws, within setting G's bounds, with text K/V reuse on and off and with the compiled
fused-math step (whose warm-up leaves no trace in the counters); reuse runs only
the time and image rows. The port runs in the mlx-lm environment, in one subprocess
(`python -m skills.mlx_image.selfcheck`); skipped where that environment is not installed."""
import json
import os
import subprocess

import numpy as np
import pytest

from harness.assets import ensure_model
from harness.environments import engine_info, engine_python
from harness.stack import REPO_ROOT
from scenarios.workloads.text_to_image import Bounds, compare_image
from skills.image_model import ImageRequest, generate, load

REQUESTS = [{"ids": [504, 3107, 351, 29337], "seed": 5, "steps": 20, "guidance": 5.0},
            {"ids": [1030, 2015], "seed": 77, "steps": 8, "guidance": 1.0}]
BOUNDS = Bounds(psnr_min_db=40.0, ssim_min=0.99)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    if engine_info("mlx-lm") is None:
        pytest.skip("mlx-lm is not installed: python -m baselines install mlx-lm")
    model = ensure_model("showo2-tiny")
    tmp = tmp_path_factory.mktemp("mlx-image")
    (tmp / "requests.json").write_text(json.dumps(REQUESTS))
    env = {**os.environ, **(engine_info("mlx-lm").get("launch_env") or {}), "PYTHONPATH": str(REPO_ROOT),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([str(engine_python("mlx-lm")), "-m", "skills.mlx_image.selfcheck", "--model", str(model),
                           "--requests", str(tmp / "requests.json"), "--out", str(tmp / "out.npz")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    torch_model = load(model)
    refs = [generate(torch_model, ImageRequest(tuple(r["ids"]), r["seed"], r["steps"], r["guidance"]))
            for r in REQUESTS]
    return dict(np.load(tmp / "out.npz")), refs


def _png(image: np.ndarray) -> bytes:
    from skills.image_server import png

    return png(image)


@pytest.mark.parametrize("mode", ["on", "off", "compiled"])
def test_the_mlx_port_draws_the_torch_image_within_bounds(drawn, mode):
    images, refs = drawn
    for i, ref in enumerate(refs):
        verdict = compare_image(f"{mode}-{i}", ref, _png(images[f"{mode}-{i}"]), BOUNDS)
        assert verdict.ok, (verdict.reason, verdict.detail)


def test_reuse_runs_only_the_time_and_image_rows(drawn):
    images, _ = drawn
    on, off, compiled = (json.loads(str(images[f"counters-{m}"])) for m in ("on", "off", "compiled"))
    assert on == compiled
    assert on["denoise_steps_total"] == off["denoise_steps_total"] == 28
    assert on["prefix_rows_reused_total"] == 20 * 2 * 65 + 8 * 65 and off["prefix_rows_reused_total"] == 0
    assert on["body_rows_total"] == 20 * 2 * 65 + 8 * 65 and off["body_rows_total"] == 20 * 2 * 130 + 8 * 130


def test_the_fused_arithmetic_matches_mlx_functions(drawn):
    images, _ = drawn
    error = json.loads(str(images["fused-math-error"]))
    assert error["exp"] < 2e-6, error
    assert max(error["sigmoid"], error["tanh"], error["softmax"]) < 1e-6, error
    assert error["silu"] < 1e-5, error  # absolute, on values up to 30
