"""The engine loop on a tiny random Llama: outputs equal transformers generate; stop conditions;
sampling; logprobs; cancellation; counters; the background thread behind submit()."""

from __future__ import annotations

import asyncio
import threading
import time

import torch

from skills.engine_core.config import ModelConfig
from skills.engine_core.engine import EngineConfig, LLMEngine
from skills.engine_core.runner import ModelRunner
from skills.engine_core.weights import build_model
from skills.engine_api import SamplingParams, TokenOutput

PROMPTS = [[5, 6, 7], list(range(10, 40)), [20, 21], list(range(50, 61)), [8]]


def make_engine(hf, eos=frozenset({2}), **overrides) -> LLMEngine:
    cfg = EngineConfig(**{"max_num_seqs": 3, "max_num_batched_tokens": 8, "max_model_len": 128,
                          "dtype": "float32", **overrides})
    model = build_model(ModelConfig.from_hf(hf.config), dict(hf.state_dict()), torch.float32)
    return LLMEngine(ModelRunner(model, cfg.max_num_seqs, cfg.max_model_len, torch.float32), None, eos, cfg)


def run(engine: LLMEngine, prompts, params) -> list[list[TokenOutput]]:
    outs: list[list[TokenOutput]] = [[] for _ in prompts]
    for i, p in enumerate(prompts):
        engine.add_request(p, params if isinstance(params, SamplingParams) else params[i], outs[i].extend)
    engine.run_until_idle()
    return outs


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                      eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_concurrent_greedy_equals_transformers(hf_model) -> None:
    engine = make_engine(hf_model)
    outs = run(engine, PROMPTS, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        assert [o.token_id for o in out] == hf_greedy(hf_model, prompt, 6)
        assert [o.finish_reason for o in out] == [None] * 5 + ["length"]
    m = engine.metrics()
    assert m["generation_tokens_total"] == 30 and m["requests_finished"] == 5
    assert m["requests_running"] == m["requests_waiting"] == 0
    assert m["batch_seqs_max"] == 3 and m["batch_tokens_max"] <= 8
    assert m["prefill_tokens_total"] == sum(map(len, PROMPTS))
    # every prompt's first token comes from a prefill forward, the other 5 from decodes
    assert m["decode_tokens_total"] == 25


def test_eos_stops_without_a_token_unless_ignored(hf_model) -> None:
    sampled = dict(max_tokens=10, temperature=1.5, seed=3)
    [free] = run(make_engine(hf_model), PROMPTS[1:2], SamplingParams(**sampled, ignore_eos=True))
    tokens = [o.token_id for o in free]
    k = next(i for i in range(1, 10) if tokens[i] not in tokens[:i])  # a token first seen at step k
    engine = make_engine(hf_model, eos=frozenset({tokens[k]}))
    [out] = run(engine, PROMPTS[1:2], SamplingParams(**sampled))
    assert [o.token_id for o in out] == tokens[:k] + [None] and out[-1].finish_reason == "stop"
    [out] = run(engine, PROMPTS[1:2], SamplingParams(**sampled, ignore_eos=True))
    assert [o.token_id for o in out] == tokens and out[-1].finish_reason == "length"


def test_logprobs_are_of_the_raw_distribution(hf_model) -> None:
    engine = make_engine(hf_model)
    [out] = run(engine, PROMPTS[:1], SamplingParams(max_tokens=3, temperature=0.0, top_logprobs=4))
    with torch.no_grad():
        logits = hf_model(torch.tensor([PROMPTS[0]])).logits[0, -1]
    expected = torch.log_softmax(logits, -1).topk(4)
    first = out[0].logprobs
    assert first.token_id == out[0].token_id == int(expected.indices[0])
    assert [t for t, _ in first.top] == expected.indices.tolist()
    torch.testing.assert_close(torch.tensor([lp for _, lp in first.top]), expected.values, atol=1e-4, rtol=0)
    assert first.logprob == first.top[0][1]
    [out] = run(engine, PROMPTS[:1], SamplingParams(max_tokens=2, temperature=0.0))
    assert all(o.logprobs is None for o in out)


def test_seeded_sampling_is_reproducible(hf_model) -> None:
    engine = make_engine(hf_model)
    params = [SamplingParams(max_tokens=12, temperature=1.5, top_p=0.9, seed=s, ignore_eos=True) for s in (1, 1, 2)]
    a, b, c = ([o.token_id for o in out] for out in run(engine, [PROMPTS[0]] * 3, params))
    assert a == b and a != c


def test_top_p_tiny_is_greedy(hf_model) -> None:
    engine = make_engine(hf_model)
    [out] = run(engine, PROMPTS[:1], SamplingParams(max_tokens=5, temperature=1.0, top_p=1e-6, ignore_eos=True))
    assert [o.token_id for o in out] == hf_greedy(hf_model, PROMPTS[0], 5)


def test_cancel_aborts_running_and_waiting(hf_model) -> None:
    engine = make_engine(hf_model, max_num_seqs=1)
    cancelled = {"a": False, "b": False}
    outs = {"a": [], "b": []}
    for name in outs:
        engine.add_request(PROMPTS[0], SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True),
                           outs[name].extend, lambda n=name: cancelled[n])
    engine.step()
    engine.step()
    cancelled["a"] = cancelled["b"] = True
    engine.run_until_idle()
    assert outs["a"][-1] == TokenOutput(None, None, "abort") and len(outs["a"]) == 3
    assert outs["b"] == [TokenOutput(None, None, "abort")]
    assert engine.metrics()["requests_running"] == 0


def test_background_thread_streams_to_asyncio(hf_model) -> None:
    engine = make_engine(hf_model)
    engine.start()

    async def one(prompt):
        return [o.token_id async for o in engine.submit(prompt, SamplingParams(max_tokens=4, temperature=0.0,
                                                                                ignore_eos=True))]

    async def main():
        return await asyncio.gather(*(one(p) for p in PROMPTS))

    try:
        results = asyncio.run(main())
    finally:
        engine.shutdown()
    assert results == [hf_greedy(hf_model, p, 4) for p in PROMPTS]


def _feed(engine: LLMEngine, gaps_s: list[float]) -> threading.Thread:
    """Adds one request now and one after each gap, from another thread (as the server's event loop does)."""
    def feed():
        for gap in [0.0, *gaps_s]:
            time.sleep(gap)
            engine.add_request(PROMPTS[0], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True),
                               lambda outs: None)
    thread = threading.Thread(target=feed)
    thread.start()
    return thread


def _first_step_size(engine: LLMEngine, gaps_s: list[float]) -> int:
    feeder = _feed(engine, gaps_s)
    engine.step(block=True)
    running = engine.metrics()["requests_running"]
    feeder.join()
    engine.run_until_idle()
    return running


def test_an_idle_engine_gathers_a_burst_into_one_step(hf_model) -> None:
    engine = make_engine(hf_model, max_num_seqs=8, max_num_batched_tokens=64, idle_gather_s=0.05)
    assert _first_step_size(engine, [0.01, 0.01, 0.01]) == 4


def test_without_gathering_an_idle_engine_starts_at_once(hf_model) -> None:
    engine = make_engine(hf_model, max_num_seqs=8, max_num_batched_tokens=64)
    assert _first_step_size(engine, [0.2]) == 1


def test_gathering_is_capped(hf_model) -> None:
    """Requests that keep coming every few ms do not hold the first step back past 10 gaps (100 ms
    here, while they come for 240 ms)."""
    engine = make_engine(hf_model, max_num_seqs=48, max_num_batched_tokens=256, idle_gather_s=0.01)
    assert 1 < _first_step_size(engine, [0.006] * 40) < 41
