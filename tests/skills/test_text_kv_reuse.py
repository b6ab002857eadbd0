"""skills/text_kv_reuse: with reuse off the Denoiser is the plain loop, pixel for pixel; with it on
the image stays within float rounding of it while each step runs only the time and image rows;
the null text's prefix is kept from load; CFG stride skips null rows and changes the image."""
import numpy as np
import pytest

from skills.image_model import ImageRequest, generate, seeded
from skills.text_kv_reuse import Denoiser, DenoiserConfig
from tests.skills.test_image_model import SMALL

IDS = [5, 6, 7, 8]


class Words:
    """A tokenizer for the tests: one id per character."""

    def __call__(self, text):
        return {"input_ids": [ord(c) % 500 + 1 for c in text]}


@pytest.fixture(scope="module")
def model():
    return seeded(SMALL, 7)


def _psnr(a, b) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_reuse_off_is_the_plain_loop(model):
    engine = Denoiser(model, Words(), DenoiserConfig(reuse_text_kv=False))
    want = generate(model, ImageRequest(tuple(IDS), 3, 6, 5.0))
    assert np.array_equal(engine.generate(IDS, 3, 6, 5.0), want)
    assert engine.counters()["prefix_rows_reused_total"] == 0


def test_reuse_on_runs_only_the_suffix_and_stays_within_rounding(model):
    engine = Denoiser(model, Words())
    want = generate(model, ImageRequest(tuple(IDS), 3, 6, 5.0))
    got = engine.generate(IDS, 3, 6, 5.0)
    assert _psnr(got, want) > 60 and np.abs(got.astype(int) - want).max() <= 2
    c = engine.counters()
    assert c["denoise_steps_total"] == 6
    assert c["prefix_rows_reused_total"] == 6 * 2 * SMALL.prefix_length
    assert c["body_rows_total"] == 6 * 2 * (1 + SMALL.image_tokens)
    assert c["null_prefix_reused_total"] == 1


def test_the_null_prefix_from_load_matches_one_computed_per_request(model):
    kept = Denoiser(model, Words()).generate(IDS, 3, 6, 5.0)
    fresh = Denoiser(model, Words(), DenoiserConfig(cache_null_text=False)).generate(IDS, 3, 6, 5.0)
    assert _psnr(kept, fresh) > 60


def test_unguided_requests_run_one_row(model):
    engine = Denoiser(model, Words())
    got = engine.generate(IDS, 3, 4, 1.0)
    assert _psnr(got, generate(model, ImageRequest(tuple(IDS), 3, 4, 1.0))) > 60
    assert engine.counters()["body_rows_total"] == 4 * (1 + SMALL.image_tokens)


def test_cfg_stride_skips_null_rows_and_is_approximate(model):
    engine = Denoiser(model, Words(), DenoiserConfig(cfg_stride=2))
    got = engine.generate(IDS, 3, 6, 5.0)
    assert engine.counters()["null_rows_skipped_total"] == 3
    assert not np.array_equal(got, generate(model, ImageRequest(tuple(IDS), 3, 6, 5.0)))


def test_a_stride_below_one_is_refused(model):
    with pytest.raises(ValueError, match="cfg_stride"):
        Denoiser(model, Words(), DenoiserConfig(cfg_stride=0))


def test_the_compiled_step_draws_the_same_image_within_rounding(model):
    engine = Denoiser(model, Words(), DenoiserConfig(compile=True))
    got = engine.generate(IDS, 3, 6, 5.0)
    assert _psnr(got, generate(model, ImageRequest(tuple(IDS), 3, 6, 5.0))) > 60
    assert engine.counters()["prefix_rows_reused_total"] == 6 * 2 * SMALL.prefix_length
