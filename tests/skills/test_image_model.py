"""skills/image_model: the omni mask, the two ways of running a step agreeing, the sampling
schedule, seeded weights, and the plain loop's determinism (on a small config, fast)."""
import numpy as np
import pytest
import torch

from skills.image_model import ImageModelConfig, ImageRequest, generate, load, save, seeded, times
from skills.image_model.sampling import batch_ids, guide, noise

SMALL = ImageModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, text_length=8, pad_token_id=0, head_layers=1,
                         head_heads=2, image_size=32, vae_channels=(16, 16, 8, 8))


@pytest.fixture(scope="module")
def model():
    return seeded(SMALL, 7)


def test_omni_mask_keeps_the_prefix_causal_and_blind_to_what_follows():
    mask = torch.from_numpy(SMALL.omni_mask())
    p, n = SMALL.prefix_length, mask.shape[0]
    assert n == p + 1 + SMALL.image_tokens
    assert torch.equal(mask[:p, :p], torch.tril(torch.ones(p, p, dtype=torch.bool)))
    assert not mask[:p, p:].any()  # text never sees the time or image rows
    assert mask[p:].all()  # time and image rows see everything: the text and each other


def test_a_step_over_the_kept_prefix_equals_the_whole_sequence(model):
    ids = batch_ids(model, ImageRequest((5, 6, 7), seed=1))
    x = noise(model, 1).expand(2, -1, -1, -1)
    with torch.inference_mode():
        whole = model.velocity(ids, x, 0.7)
        kept = model.velocity_after(model.prefix_kv(ids), x, 0.7)
    assert whole.shape == x.shape
    torch.testing.assert_close(kept, whole, rtol=1e-4, atol=1e-5)


def test_the_prefix_does_not_depend_on_the_image_or_the_time(model):
    """What makes reuse exact in arithmetic: change the latents and t, the text rows' outputs stay."""
    ids = batch_ids(model, ImageRequest((5, 6, 7), seed=1))
    p = SMALL.prefix_length
    with torch.inference_mode():
        a = model._prefix_embeddings(ids)
        for layer in model.layers:
            a, _ = layer(a, model.rope_cos[:p], model.rope_sin[:p], model.omni_mask[:p, :p])
        full = torch.cat([model._prefix_embeddings(ids), model._suffix_embeddings(noise(model, 3).expand(2, -1, -1, -1), 0.2)[0]], 1)
        for layer in model.layers:
            full, _ = layer(full, model.rope_cos, model.rope_sin, model.omni_mask)
    torch.testing.assert_close(full[:, :p], a, rtol=1e-4, atol=1e-5)


def test_times_run_from_noise_to_image_shifted_towards_noise():
    ts = times(20, 3.0)
    assert len(ts) == 21 and ts[0] == 1.0 and ts[-1] == 0.0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ts[10] > 0.5  # the midpoint moved towards the noisy end
    assert times(4, 1.0) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_guidance_mixes_the_two_rows():
    v = torch.stack([torch.full((2,), 3.0), torch.full((2,), 1.0)])[:, None]
    assert torch.equal(guide(v, 5.0), torch.full((1, 1, 2), 11.0))
    assert torch.equal(guide(v[:1], 5.0), v[:1])


def test_the_plain_loop_is_deterministic_and_steered_by_prompt_and_seed(model):
    a = generate(model, ImageRequest((5, 6, 7), seed=1, steps=4))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, generate(model, ImageRequest((5, 6, 7), seed=1, steps=4)))
    assert not np.array_equal(a, generate(model, ImageRequest((5, 6, 7), seed=2, steps=4)))
    assert not np.array_equal(a, generate(model, ImageRequest((5, 6, 8), seed=1, steps=4)))
    assert a.std() > 20  # pixels spread over the range, not mid-grey


def test_text_is_cut_or_padded_to_its_fixed_length(model):
    assert model.text_ids([1, 2]) == [1, 2] + [0] * 6
    assert model.text_ids(list(range(1, 20))) == list(range(1, 9))
    assert model.null_ids() == [0] * 8


def test_saved_weights_load_back_the_same_images(model, tmp_path):
    save(model, tmp_path)
    again = load(tmp_path)
    assert again.cfg == SMALL
    request = ImageRequest((9, 10), seed=4, steps=3)
    assert np.array_equal(generate(model, request), generate(again, request))
