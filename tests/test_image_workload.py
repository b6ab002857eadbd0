"""Setting F's judge and guard on their own: an image that cannot be judged fails (never skips),
bounds decide, and the reuse guard's consistency check catches counts no run could produce."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from scenarios.workloads.text_to_image import POOL, Bounds, compare_image, reuse_guard, tasks
from skills.image_model import ImageModelConfig

BOUNDS = Bounds(psnr_min_db=40.0, ssim_min=0.99)
REF = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _encoded(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def test_the_same_pixels_pass_as_exact():
    v = compare_image("i", REF, _encoded(REF), BOUNDS)
    assert v.ok and v.detail["exact"] and v.detail["pixels_off"] == 0


def test_a_pixel_one_level_off_passes_within_bounds_but_is_not_exact():
    near = REF.copy()
    near[3, 4, 0] = near[3, 4, 0] + 1 if near[3, 4, 0] < 255 else 254
    v = compare_image("i", REF, _encoded(near), BOUNDS)
    assert v.ok and not v.detail["exact"] and v.detail["pixels_off"] == 1 and v.detail["psnr_db"] > 60


@pytest.mark.parametrize("blob, reason", [
    (None, "no image"),
    (b"", "no image"),
    (b"\x89PNG\r\n\x1a\nnot really", "does not decode"),
    (_encoded(REF, "JPEG"), "not a PNG"),
    (_encoded(REF[:16]), "16"),
])
def test_what_cannot_be_judged_fails(blob, reason):
    v = compare_image("i", REF, blob, BOUNDS)
    assert not v.ok and reason in v.reason


def test_noise_and_a_shifted_image_fail_the_bounds():
    noise = np.random.default_rng(1).integers(0, 256, REF.shape, dtype=np.uint8)
    assert "PSNR" in compare_image("i", REF, _encoded(noise), BOUNDS).reason
    smooth = np.tile(np.linspace(0, 250, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    shifted = np.roll(smooth, 2, axis=1)
    v = compare_image("i", smooth, _encoded(shifted), BOUNDS)
    assert not v.ok and v.detail["psnr_db"] < 40


def test_tasks_carry_the_salt_and_a_seed_each():
    profile = {"prompts": 3, "steps": 20, "guidance": 5.0}
    a = tasks(profile, 5, 7, "salt1", "m")
    assert [t.prompt for t in a][:3] == [f"[salt1] {p}" for p in POOL[:3]] and a[3].prompt == a[0].prompt
    assert len({t.seed for t in a}) == 5
    assert [t.seed for t in tasks(profile, 5, 7, "salt2", "m")] == [t.seed for t in a]  # seeds from the profile
    assert {t.seed for t in tasks(profile, 5, 7, "salt1", "a")}.isdisjoint({t.seed for t in a})


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(ImageModelConfig().to_json()))
    return tmp_path


def test_the_reuse_guard_passes_counts_a_real_run_could_make(model_dir):
    guard = reuse_guard(model_dir, steps=20)
    moved = {"denoise_steps_total": 100, "prefix_rows_reused_total": 100 * 2 * 65}
    assert guard.check(None, moved, {"completed": 5}).ok


@pytest.mark.parametrize("moved, why", [
    ({"denoise_steps_total": 100}, "nothing shows it ran"),
    ({"denoise_steps_total": 100, "prefix_rows_reused_total": 100 * 2 * 65 + 1}, "more than"),
    ({"denoise_steps_total": 40, "prefix_rows_reused_total": 10}, "steps' worth"),
])
def test_the_reuse_guard_fails_claims_no_run_could_make(model_dir, moved, why):
    result = reuse_guard(model_dir, steps=20).check(None, moved, {"completed": 5})
    assert not result.ok and why in result.reason
