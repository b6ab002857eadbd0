"""engine_core behind the OpenAI server layer, in-process: a tiny random Llama with the tiny
profile's tokenizer (its ids are valid tokens), through the engine thread and QueueStream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from skills.engine_core.config import ModelConfig
from skills.engine_core.engine import EngineConfig, LLMEngine
from skills.engine_core.runner import ModelRunner
from skills.engine_core.weights import build_model
from skills.openai_server import ServerInfo, create_app


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from harness.assets import ensure_model

    return AutoTokenizer.from_pretrained(Path(ensure_model("smollm2-135m-instruct")))


@pytest.fixture(params=[1])
def served(request, make_llama, tokenizer):
    hf = make_llama(4, vocab_size=len(tokenizer))
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=128, dtype="float32",
                       stream_interval=request.param)
    model = build_model(ModelConfig.from_hf(hf.config), dict(hf.state_dict()), torch.float32)
    engine = LLMEngine(ModelRunner(model, 4, 128, torch.float32), tokenizer, frozenset({2}), cfg)
    engine.start()
    try:
        with TestClient(create_app(engine, ServerInfo("tiny", "/tiny", 0, server_name="engine-a"))) as client:
            yield client, engine, hf
    finally:
        engine.shutdown()


def test_stream_equals_whole_and_transformers(served) -> None:
    client, engine, hf = served
    request = {"prompt": "Hello there", "max_tokens": 8, "temperature": 0, "ignore_eos": True, "logprobs": 2}
    whole = client.post("/v1/completions", json=request).json()
    with client.stream("POST", "/v1/completions", json={**request, "stream": True,
                                                         "stream_options": {"include_usage": True}}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole["choices"][0]["text"]
    assert chunks[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"] == 8
    ids = torch.tensor([engine.tokenizer("Hello there").input_ids])
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                           min_new_tokens=8, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert whole["choices"][0]["logprobs"]["tokens"] == [engine.tokenizer.decode([t]) for t in expected]
    assert engine.metrics()["forward_passes"] >= 8


@pytest.mark.parametrize("served", [4], indirect=True)
def test_a_stream_interval_sends_the_same_tokens_in_fewer_chunks_after_the_first(served) -> None:
    client, engine, _ = served
    request = {"prompt": "Hello there", "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    whole = client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={**request, "stream": True}) as r:
        texts = [json.loads(line[6:])["choices"][0]["text"] for line in r.iter_lines() if line.startswith("data: {")]
    assert "".join(texts) == whole
    # 10 tokens: the first at once, then 4 a chunk, the last one with the request's end.
    assert len(texts) == 4, texts


def test_too_long_is_a_400(served) -> None:
    client, _, _ = served
    response = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 500})
    assert response.status_code == 400 and "128" in response.json()["error"]["message"]


def test_concurrent_requests_share_forwards(served) -> None:
    client, engine, _ = served
    import concurrent.futures

    request = {"prompt": "Count with me", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    before = engine.metrics()["forward_passes"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda _: client.post("/v1/completions", json=request).json()["choices"][0]["text"],
                              range(4)))
    assert len(set(texts)) == 1
    assert engine.metrics()["forward_passes"] - before < 4 * 40  # batched, not one after another
    assert engine.metrics()["batch_seqs_max"] >= 2
