"""skills/asr_engine: transcripts equal transformers generate's for every chunk prefix (a small
seeded moonshine_streaming: several streams at once, cache on and off, drafts accepted whole, in
part and not at all, end-of-sequence, the limit, closes, the asyncio interface), and equal
harness.transcription's reference on the real tiny model and real speech (marked slow)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from skills.asr_engine import AsrEngine, EngineConfig
from skills.asr_engine.config import token_limit
from skills.asr_engine.decoder import Decoder
from skills.asr_engine.engine import Model
from skills.asr_engine.greedy_head import GreedyHead
from skills.asr_engine.stream import Transcript
from skills.asr_engine.weights import DecoderWeights
from skills.encoder_cache import EncoderGeometry, EncoderWeights, IncrementalEncoder


FRAME, RATE = 320, 16000


class IdsTokenizer:
    """Text = the token ids, so transcripts compare token for token."""

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hf(make_moonshine):
    model = make_moonshine(seed=3)
    with torch.no_grad():
        model.proj_out.weight.mul_(30)  # decisive greedy choices, as the harness's tiny model
    return model


def make_model(hf, eos: int = 2) -> Model:
    enc = hf.model.encoder
    return Model(IncrementalEncoder(EncoderWeights.from_hf(enc), EncoderGeometry.from_hf(enc.config)),
                 Decoder(DecoderWeights.from_hf(hf)), IdsTokenizer(), start_token=1, eos=frozenset([eos]))


def reference(hf, samples: np.ndarray, eos: int = 2) -> str:
    """transformers generate by the transcript rule (harness/transcription.py)."""
    n = len(samples) // FRAME * FRAME
    limit = token_limit(n)
    if limit == 0:
        return ""
    audio = torch.from_numpy(samples[:n].astype(np.float32) / 32768.0)[None]
    with torch.inference_mode():
        out = hf.generate(audio, attention_mask=torch.ones_like(audio, dtype=torch.long), max_new_tokens=limit,
                          do_sample=False, num_beams=1, eos_token_id=eos, decoder_start_token_id=1)
    ids = out[0, 1:].tolist()
    return IdsTokenizer().decode(ids[:-1] if ids and ids[-1] == eos else ids)


def speech(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    envelope = 0.3 + np.abs(np.sin(np.arange(n) / (1500.0 + 300 * seed)))
    return (rng.standard_normal(n) * envelope * 4000).astype(np.int16)


def run_streams(engine: AsrEngine, audio: dict[str, np.ndarray], chunk: int) -> dict[str, list[tuple[int, str]]]:
    """Every stream sends its next chunk, then the engine runs until all are answered; repeat."""
    got: dict[str, list[tuple[int, str]]] = {name: [] for name in audio}
    for name in audio:
        engine.open(name)
    for start in range(0, max(len(a) for a in audio.values()), chunk):
        for name, a in audio.items():
            if start < len(a):
                end = min(start + chunk, len(a))
                engine.request(name, a[start:end], lambda text, name=name, end=end: got[name].append((end, text)))
        engine.run_until_idle()
    return got


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("chunk", [RATE // 2, 80 * 131])
def test_every_partial_equals_generate_on_its_prefix(hf, cache, chunk) -> None:
    audio = {"a": speech(0, 3.0), "b": speech(1, 2.2), "c": speech(2, 1.1)}
    engine = AsrEngine(make_model(hf), EngineConfig(max_streams=2, encoder_cache=cache))  # 3 streams, 2 slots
    got = run_streams(engine, audio, chunk)
    for name, answers in got.items():
        n = len(audio[name])
        assert [end for end, _ in answers] == [min(s + chunk, n) for s in range(0, n, chunk)]
        for end, text in answers:
            assert text == reference(hf, audio[name][:end]), (name, end)
    c = engine.counters()
    assert c["chunks"] == sum(len(a) for a in got.values())
    if cache:
        assert c["encoder_frames_reused"] > 0
    else:
        assert c["encoder_frames_reused"] == 0


def test_cache_computes_fewer_frames_than_re_encoding(hf) -> None:
    audio = {"a": speech(0, 4.0)}
    counts = {}
    for cache in (True, False):
        engine = AsrEngine(make_model(hf), EngineConfig(encoder_cache=cache))
        run_streams(engine, audio, RATE)
        counts[cache] = engine.counters()
    assert counts[False]["encoder_frames_computed"] == 50 + 100 + 150 + 200
    assert counts[True]["encoder_frames_computed"] == 50 + 62 + 62 + 62
    assert counts[True]["encoder_frames_reused"] == 38 + 88 + 138


def test_a_draft_is_accepted_whole_in_part_or_not_at_all(hf) -> None:
    model = make_model(hf)
    a = speech(4, 3.0)
    expected = reference(hf, a)
    tokens = [int(t) for t in expected.split()]
    assert len(tokens) == token_limit(len(a)) >= 10  # no EOS here: the draft covers the whole transcript
    for draft, accepted in [(tokens, len(tokens)), (tokens[:4] + [7] + tokens[5:], 4), ([7, 8, 9], 0)]:
        engine = AsrEngine(model, EngineConfig(lookup_tokens=0))  # one token per decode step: steps counted
        engine.open("s")
        engine.run_until_idle()
        engine.streams["s"].last = Transcript(0, tuple(draft), False, "")  # as if a partial said this
        got = []
        engine.request("s", a, got.append)
        engine.run_until_idle()
        c = engine.counters()
        assert got == [expected]
        assert (c["draft_tokens_proposed"], c["draft_tokens_accepted"]) == (len(draft), accepted)
        # a whole draft: one verify, no decode step (its last token is the limit's)
        assert c["decode_steps"] == max(0, len(tokens) - accepted - 1)


def test_decode_steps_verify_lookup_drafts(hf) -> None:
    """Drafts from the previous partial and the decode's own output, verified in each step: the
    same transcripts as one token per step, in fewer steps."""
    audio = {"a": speech(12, 3.0), "b": speech(13, 2.5)}
    counters, answers = {}, {}
    for k in (0, 1, 3):
        engine = AsrEngine(make_model(hf), EngineConfig(max_streams=2, lookup_tokens=k, lookup_rows=2 + 2 * k))
        answers[k] = run_streams(engine, audio, RATE // 2)
        counters[k] = engine.counters()
    assert answers[0] == answers[1] == answers[3]
    for name, got in answers[0].items():
        for end, text in got:
            assert text == reference(hf, audio[name][:end])
    assert counters[0]["lookup_tokens_proposed"] == 0
    for k in (1, 3):
        c = counters[k]
        assert 0 < c["lookup_tokens_accepted"] <= c["lookup_tokens_proposed"] <= k * c["decode_rows"]
        assert c["decode_steps"] < counters[0]["decode_steps"]
        assert c["tokens_generated"] == counters[0]["tokens_generated"]


def test_end_of_sequence_ends_a_transcript(hf) -> None:
    """A token the model does emit, made the end-of-sequence token on both sides."""
    a = speech(5, 2.0)
    tokens = [int(t) for t in reference(hf, a).split()]
    cut = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    eos = tokens[cut]
    engine = AsrEngine(make_model(hf, eos=eos), EngineConfig(max_streams=2))
    got = run_streams(engine, {"s": a, "t": speech(6, 2.0)}, RATE // 2)
    for name, audio in (("s", a), ("t", speech(6, 2.0))):
        for end, text in got[name]:
            assert text == reference(hf, audio[:end], eos=eos)
    assert got["s"][-1][1] == " ".join(map(str, tokens[:cut]))


def test_short_audio_and_repeated_requests_need_no_decode(hf) -> None:
    engine = AsrEngine(make_model(hf), EngineConfig())
    engine.open("s")
    got = []
    for samples in (np.zeros(100, np.int16), speech(7, 0.1), speech(7, 0.5), np.zeros(200, np.int16), None):
        engine.request("s", samples, got.append)  # None: a finalize
    engine.run_until_idle()
    whole = np.concatenate([np.zeros(100, np.int16), speech(7, 0.1), speech(7, 0.5)])
    assert got[:2] == ["", ""]  # under 2,560 samples the token limit is 0
    assert got[2] == reference(hf, whole) != ""
    assert got[3] == got[4] == got[2]  # 200 more samples: still no new whole frame; finalize: the same
    assert engine.counters()["decodes"] == 1 and engine.counters()["chunks"] == 5


def test_a_closed_stream_never_disturbs_the_others(hf) -> None:
    engine = AsrEngine(make_model(hf), EngineConfig(max_streams=4))
    a, b = speech(8, 2.0), speech(9, 2.0)
    got: dict[str, list] = {"a": [], "b": []}
    for name, audio in (("a", a), ("b", b)):
        engine.open(name)
        engine.request(name, audio, got[name].append)
    engine.step()  # both decoding
    assert len(engine.running) == 2
    engine.close("a")
    engine.run_until_idle()
    assert got == {"a": [None], "b": [reference(hf, b)]}  # a's request dropped (its future is cancelled)
    assert engine.streams.keys() == {"b"} and not engine.running
    with pytest.raises(KeyError):
        engine.request("a", a, got["a"].append)
    with pytest.raises(ValueError):
        engine.open("b")


def test_a_stream_too_long_for_the_model_fails_alone(hf) -> None:
    engine = AsrEngine(make_model(hf), EngineConfig(max_streams=4))
    frames = engine.max_frames  # 512 decoder positions here: 10.24 s
    got: dict[str, list] = {"long": [], "ok": []}
    for name, seconds in (("long", frames * FRAME / RATE + 0.1), ("ok", 1.0)):
        engine.open(name)
        engine.request(name, speech(11, seconds), got[name].append)
    engine.run_until_idle()
    assert isinstance(got["long"][0], ValueError) and got["ok"] == [reference(hf, speech(11, 1.0))]
    engine.request("long", speech(11, 0.5), got["long"].append)  # still open on the caller's side
    engine.run_until_idle()
    assert isinstance(got["long"][1], RuntimeError) and "long" not in engine.streams


def test_the_asyncio_interface_on_the_engine_thread(hf) -> None:
    engine = AsrEngine.start_on_own_thread(lambda: AsrEngine(make_model(hf), EngineConfig(max_streams=4)))
    a = speech(10, 1.5)

    async def main() -> tuple[list[str], str, str]:
        engine.open("x")
        partials = [await engine.feed("x", a[i:i + 8000]) for i in range(0, len(a), 8000)]
        final = await engine.finalize("x")
        engine.close("x")
        return partials, final, await engine.transcribe(a)

    try:
        partials, final, whole = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        engine.shutdown()
    assert partials == [reference(hf, a[:min(i + 8000, len(a))]) for i in range(0, len(a), 8000)]
    assert final == whole == partials[-1]


def test_greedy_head_screen_equals_the_fp32_argmax() -> None:
    torch.manual_seed(0)
    w = torch.randn(4096, 64) * 0.05
    w[7] = w[3000]  # an exact tie: the lower id wins, as argmax
    screened, plain = GreedyHead.build(w), GreedyHead.build(w, screened=False)
    for scale in (0.1, 1.0, 30.0):
        h = torch.randn(33, 64) * scale
        h[0] = w[3000] * scale
        assert screened.argmax(h) == plain.argmax(h) == (h @ w.T).argmax(dim=1).tolist()
    assert screened.argmax(h[:1]) == [7]
    assert screened.argmax(torch.zeros(2, 64)) == [0, 0]  # every logit ties: more candidates than the screen's top


# --- the real tiny model and real speech, against harness.transcription (cached on disk) ---


@pytest.fixture(scope="module")
def real():
    from harness.assets import ensure_model
    from harness.errors import HarnessError
    from harness.speech import clips

    try:
        return ensure_model("moonshine-streaming-tiny"), {c.name: c for c in clips(ensure_model("speech-clips"))}
    except HarnessError as exc:
        pytest.skip(f"assets: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("chunk_s, cache", [(0.5, True), (1.0, True), (1.0, False)])
def test_real_speech_partials_equal_the_reference(real, chunk_s, cache) -> None:
    from harness.transcription import transcripts
    from skills.asr_engine import load_engine

    model_dir, clips = real
    audio = {name: clips[name].samples()[:int(3.5 * RATE)] for name in ("espeak-0", "clone-test", "beckett")}
    engine = load_engine(model_dir, EngineConfig(max_streams=3, encoder_cache=cache))
    chunk = int(chunk_s * RATE)
    got = run_streams(engine, audio, chunk)
    for name, answers in got.items():
        refs = transcripts(model_dir, audio[name].astype("<i2").tobytes(), [end for end, _ in answers])
        assert [text for _, text in answers] == [r.text for r in refs], name
    assert (engine.counters()["encoder_frames_reused"] > 0) == cache
