"""skills/encoder_cache on a small seeded moonshine_streaming (the real windows, hidden 64): the
incremental encoder equals transformers' full encode of the buffer after every chunk (odd chunk
sizes in whole 320-sample frames and in 80-sample steps, first chunks shorter than the windows'
reach, several streams in one batch), counts what it computed and kept, and the cross-attention
K/V cache equals a full projection. Milliseconds per test; no asset needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch


from skills.encoder_cache import EncoderGeometry, EncoderWeights, IncrementalEncoder
from skills.encoder_cache.cross_kv import CrossKV, CrossProjection, update_cross_kv

FRAME = 320
TOL = 1e-4  # float32 rounding: the same sums in another order (measured 2e-6 to 5e-6)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(make_moonshine):
    return make_moonshine()


@pytest.fixture(scope="module")
def encoder(model):
    enc = model.model.encoder
    return IncrementalEncoder(EncoderWeights.from_hf(enc), EncoderGeometry.from_hf(enc.config))


@pytest.fixture(scope="module")
def audio():
    """Speech-like audio: noise under a slow envelope, with a silent stretch (CMVN of a quiet frame)."""
    rng = np.random.default_rng(1)
    n = FRAME * 160
    envelope = 0.2 + np.abs(np.sin(np.arange(n) / 2500.0))
    x = rng.standard_normal(n) * envelope * 0.1
    x[FRAME * 40:FRAME * 44] *= 1e-3
    return torch.from_numpy(x.astype(np.float32))


def full_encode(model, audio: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        ones = torch.ones(1, audio.shape[0], dtype=torch.long)
        return model.model.encoder(audio[None], attention_mask=ones).last_hidden_state[0]


def test_geometry_of_the_real_windows(model) -> None:
    geo = EncoderGeometry.from_hf(model.config.encoder_config)
    assert geo.windows == ((16, 4), (16, 4), (16, 0), (16, 0), (16, 4), (16, 4))
    assert (geo.samples_per_frame, geo.lookahead, geo.receptive_left) == (320, 12, 90)
    assert [geo.final(k, 100) for k in range(6)] == [97, 94, 94, 94, 91, 88]
    assert geo.final(5, 5) == 0
    assert [geo.keep(k) for k in range(6)] == [18, 18, 15, 15, 18, 18]


def test_only_the_lookahead_tail_changes_when_audio_grows(model, audio) -> None:
    """The reason the cache is exact: frames before the last `lookahead` never change."""
    short, long = full_encode(model, audio[:FRAME * 100]), full_encode(model, audio[:FRAME * 130])
    change = (short - long[:100]).abs().amax(dim=-1)
    assert change[:100 - 12].max() < TOL
    assert change[-1] > 1e-3  # the tail does move (the bound is not vacuous)


@pytest.mark.parametrize("first, chunk, total", [(1, 1, 40), (3, 7, 160), (13, 13, 160), (50, 50, 160), (2, 37, 160)])
def test_incremental_equals_the_full_encode_after_every_chunk(model, encoder, audio, first, chunk, total) -> None:
    """Chunks in frames (320 samples); the first ones far shorter than the windows' reach (90)."""
    state = encoder.new_state()
    cuts = [first] + list(range(first + chunk, total + 1, chunk))
    done = 0
    with torch.inference_mode():
        for end in cuts:
            ext = encoder.extend([state], [audio[done * FRAME:end * FRAME]])[0]
            assert (ext.frames, ext.changed_from) == (end, max(0, done - 12))
            assert (state.hidden_states - full_encode(model, audio[:end * FRAME])).abs().max() < TOL
            done = end


@pytest.mark.parametrize("step", [80 * 3, 80 * 5, 80 * 17])
def test_audio_arriving_in_80_sample_steps(model, encoder, audio, step) -> None:
    """The engine's way: buffer whatever arrives, encode the whole 320-sample frames so far."""
    state, received, encoded = encoder.new_state(), 0, 0
    with torch.inference_mode():
        while received < 30 * FRAME:
            received += step
            usable = received // FRAME * FRAME
            encoder.extend([state], [audio[encoded:usable]])
            encoded = usable
            if usable:
                assert (state.hidden_states - full_encode(model, audio[:usable])).abs().max() < TOL


def test_streams_in_one_batch_equal_each_alone(encoder, audio) -> None:
    plans = {"a": [5, 9, 40], "b": [1, 2, 3, 60], "c": [30, 8, 8]}  # frames per chunk
    together = {name: encoder.new_state() for name in plans}
    with torch.inference_mode():
        for i in range(4):
            names = [n for n in plans if i < len(plans[n])]
            offsets = {n: sum(plans[n][:i]) for n in names}
            encoder.extend([together[n] for n in names],
                           [audio[offsets[n] * FRAME:(offsets[n] + plans[n][i]) * FRAME] for n in names])
        for name, plan in plans.items():
            alone = encoder.new_state()
            done = 0
            for frames in plan:
                encoder.extend([alone], [audio[done * FRAME:(done + frames) * FRAME]])
                done += frames
            assert (together[name].hidden_states - alone.hidden_states).abs().max() < TOL


def test_counts_frames_computed_and_reused(encoder, audio) -> None:
    state = encoder.new_state()
    with torch.inference_mode():
        for end in range(50, 201, 50):  # 1 s chunks
            encoder.extend([state], [audio[(end - 50) * FRAME:end * FRAME]] if end <= 160 else [audio[:0]])
    # chunks end at 50, 100, 150 (then 160 frames of audio run out: the last extend is empty)
    assert state.frames == 150
    assert state.computed == 50 + (100 - 38) + (150 - 88)
    assert state.reused == 0 + 38 + 88
    assert state.computed < 50 + 100 + 150  # what re-encoding every chunk's buffer computes


def test_empty_audio_changes_nothing(encoder, audio) -> None:
    state = encoder.new_state()
    with torch.inference_mode():
        encoder.extend([state], [audio[:10 * FRAME]])
        before = state.hidden_states.clone()
        ext = encoder.extend([state], [audio[:0]])[0]
    assert (ext.changed_from, ext.frames, ext.computed) == (10, 10, 0)
    assert torch.equal(state.hidden_states, before)
    with pytest.raises(ValueError):
        encoder.extend([state], [audio[:100]])  # not whole frames


def test_cross_kv_recomputes_only_changed_frames(model, encoder, audio) -> None:
    dec = model.model.decoder
    kv = [w for layer in dec.layers for w in (layer.encoder_attn.k_proj.weight, layer.encoder_attn.v_proj.weight)]
    proj = CrossProjection(position=dec.pos_emb.weight.detach(), proj=None, w_kv=torch.cat(kv).detach(),
                           layers=len(dec.layers), heads=2, head_dim=32)
    state, cache = encoder.new_state(), CrossKV(proj)
    projected = []
    with torch.inference_mode():
        for start, end in [(0, 20), (20, 45), (45, 160)]:
            ext = encoder.extend([state], [audio[start * FRAME:end * FRAME]])[0]
            projected.append(update_cross_kv([cache], [state.hidden_states], [ext.changed_from]))
        h = state.hidden_states + dec.pos_emb.weight[:state.frames]
        for i, layer in enumerate(dec.layers):
            k = layer.encoder_attn.k_proj(h).view(-1, 2, 32).transpose(0, 1)
            v = layer.encoder_attn.v_proj(h).view(-1, 2, 32).transpose(0, 1)
            assert (cache.keys(i) - k).abs().max() < TOL and (cache.values(i) - v).abs().max() < TOL
    assert projected == [20, 45 - 8, 160 - 33]  # new frames + the previous chunk's lookahead tail
