"""The OpenAI server layer over a scripted fake engine: shapes, streaming, usage, stop strings,
logprobs, errors. No model runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from skills.openai_server import (
    QueueStream,
    SamplingParams,
    ServerInfo,
    TokenLogprob,
    TokenOutput,
    create_app,
)
from skills.engine_api import GenerationFailed

TEXT = " Paris is the capital of France."


class ScriptedEngine:
    """Answers every request with the tokens of TEXT (then EOS), honouring max_tokens."""

    max_model_len = 64
    vocab_size = 49152
    runtime = {"few_row_matmul": "scripted"}  # what a real engine chose at load (listed in /v1/models)

    def __init__(self, tokenizer, fail_after: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.script = tokenizer(TEXT).input_ids
        self.fail_after = fail_after
        self.requests: list[tuple[list[int], SamplingParams]] = []
        self.streams: list[QueueStream] = []
        self.steps: tuple[int, ...] = ()  # tokens per engine step, each step 20 ms after the last; (): all at once
        self.interval = 1  # the stream interval its streams hold outputs back by

    def submit(self, prompt_ids, params):
        self.requests.append((prompt_ids, params))
        stream = QueueStream.on_running_loop(self.interval)
        self.streams.append(stream)
        outs: list = []
        for i, token in enumerate(self.script[: params.max_tokens]):
            if self.fail_after is not None and i == self.fail_after:
                outs.append(GenerationFailed("boom"))
                break
            lp = None if params.top_logprobs is None else TokenLogprob(
                token, -0.5, tuple((token + j, -0.5 - j) for j in range(params.top_logprobs)))
            last = i + 1 == params.max_tokens
            outs.append(TokenOutput(token, lp, "length" if last else None))
        else:
            if len(self.script) < params.max_tokens:
                outs.append(TokenOutput(None, None, "stop"))
        if not self.steps:
            for out in outs:
                stream.send(out)
            return stream
        start = 0
        for i, size in enumerate(self.steps):
            stream.loop.call_later(0.02 * i, stream.send_many, outs[start: start + size])
            start += size
        return stream

    def metrics(self):
        return {"forward_passes": len(self.requests)}

    def reset_prefix_cache(self):
        return True

    def shutdown(self):
        pass


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from harness.assets import ensure_model

    return AutoTokenizer.from_pretrained(Path(ensure_model("smollm2-135m-instruct")))


@pytest.fixture
def engine(tokenizer):
    return ScriptedEngine(tokenizer)


@pytest.fixture
def client(engine):
    with TestClient(create_app(engine, ServerInfo("m", "/models/m", 0, server_name="fake"))) as c:
        yield c


def sse(client, path, body) -> list[dict]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def test_completion_whole_and_streamed(client) -> None:
    body = client.post("/v1/completions", json={"prompt": "The capital", "max_tokens": 30}).json()
    assert body["choices"][0]["text"] == TEXT and body["choices"][0]["finish_reason"] == "stop"
    n = body["usage"]["completion_tokens"]
    chunks = sse(client, "/v1/completions", {"prompt": "The capital", "max_tokens": 30,
                                            "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == TEXT
    # Tokens that arrive together share a chunk (here the scripted engine queues them all at
    # once); the running usage grows with every chunk and reaches n.
    counts = [c["usage"]["completion_tokens"] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    assert counts == sorted(set(counts)) and counts[-1] == n
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == n


def test_a_steps_tokens_go_out_as_one_chunk(client, engine) -> None:
    """An engine step's tokens (a speculative step emits several) make one SSE chunk, as vLLM sends
    them; the harness reads the count from continuous usage."""
    engine.steps = (3, 2, 1, 30)
    chunks = sse(client, "/v1/completions", {"prompt": "The capital", "max_tokens": 30,
                                            "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    counts = [c["usage"]["completion_tokens"] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == TEXT
    assert counts[-1] == len(engine.script) and counts == sorted(set(counts))
    assert len(counts) <= 4 and counts[0] >= 3  # one chunk per step at most (a slow reader may merge steps)


def test_a_stream_interval_sends_the_first_token_alone_then_that_many_a_chunk(client, engine) -> None:
    """With a stream interval of 3 an engine stepping one token at a time still gets its first token
    out at once (TTFT unchanged), then 3 tokens a chunk, the rest with the finish; the text is the same."""
    engine.steps, engine.interval = (1,) * 31, 3
    try:
        chunks = sse(client, "/v1/completions", {"prompt": "The capital", "max_tokens": 30,
                                                "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    finally:
        engine.steps, engine.interval = (), 1
    counts = [c["usage"]["completion_tokens"] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    sizes = [b - a for a, b in zip([0] + counts, counts)]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == TEXT
    assert counts[-1] == len(engine.script) > 4
    # a slow reader may merge two hand-overs into one chunk, never split one
    assert sizes[0] == 1 and all(n % 3 == 0 for n in sizes[1:-1]) and 1 <= sizes[-1], sizes


def test_a_held_back_stream_hands_over_what_it_holds_with_a_failure() -> None:
    async def read() -> list[int]:
        stream = QueueStream.on_running_loop(4)
        for token in (1, 2, 3):
            stream.send_many([TokenOutput(token)])
        stream.send(GenerationFailed("boom"))
        got: list[int] = []
        with pytest.raises(GenerationFailed):
            async for items in stream.batches():
                got.extend(item.token_id for item in items)
        return got

    assert asyncio.run(asyncio.wait_for(read(), 5)) == [1, 2, 3]


def test_max_tokens_is_length(client, engine) -> None:
    body = client.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2}).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 2
    assert engine.requests[-1][0] == [1, 2, 3]


def test_stop_string_cuts_and_cancels(client, engine) -> None:
    body = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 30, "stop": ["capital"]}).json()
    assert body["choices"][0]["text"] == " Paris is the " and body["choices"][0]["finish_reason"] == "stop"
    assert engine.streams[-1].cancelled.is_set()
    chunks = sse(client, "/v1/completions", {"prompt": "x", "max_tokens": 30, "stop": "capital"})
    assert "".join(c["choices"][0]["text"] for c in chunks) == " Paris is the "


def test_chat_role_chunk_and_logprobs(client, tokenizer) -> None:
    chunks = sse(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 3, "logprobs": True, "top_logprobs": 2})
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    entries = [e for c in chunks[1:] if c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]
    assert len(entries) == 3
    first = tokenizer(TEXT).input_ids[0]
    assert entries[0]["token"] == tokenizer.decode([first]) and len(entries[0]["top_logprobs"]) == 2
    body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                     "max_tokens": 3, "logprobs": True}).json()
    assert body["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []


def test_completion_logprobs_shape(client) -> None:
    lp = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "logprobs": 2}).json()[
        "choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 3
    assert lp["text_offset"][0] == 0 and all(2 <= len(t) <= 3 for t in lp["top_logprobs"])


def test_metrics_models_health_reset(client) -> None:
    assert client.get("/health").status_code == 200
    card = client.get("/v1/models").json()["data"][0]
    assert card["owned_by"] == "fake" and card["runtime"] == {"few_row_matmul": "scripted"}
    assert client.get("/metrics").json() == {"forward_passes": 0}
    assert client.post("/reset_prefix_cache").json() == {"reset": True}


@pytest.mark.parametrize("body,param", [
    ({"max_tokens": 4}, "prompt"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "max_tokens": 100}, "max_tokens"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": [99999999]}, "prompt"),
])
def test_bad_requests(client, body, param) -> None:
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("messages,param", [
    ([{"role": "wizard", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": "x"}, {"role": "", "content": "y"}], "messages[1].role"),
    ([{"role": 3, "content": "x"}], "messages[0]"),
    ([], "messages"),
])
def test_bad_chat_messages_are_a_400_and_the_server_still_serves(client, messages, param) -> None:
    response = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    ok = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_unsupported_feature_names_the_server(client) -> None:
    error = client.post("/v1/completions", json={"prompt": "x", "echo": True}).json()["error"]
    assert "not supported by fake" in error["message"]


def test_engine_failure(tokenizer) -> None:
    with TestClient(create_app(ScriptedEngine(tokenizer, fail_after=1), ServerInfo("m", "/m", 0))) as client:
        chunks = sse_error(client)
        assert chunks[0]["choices"][0]["text"] == " Paris" and "boom" in chunks[-1]["error"]["message"]
        response = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 5})
        assert response.status_code == 500 and "boom" in response.json()["error"]["message"]


def sse_error(client) -> list[dict]:
    with client.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 5, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert "data: [DONE]" not in lines
    return [json.loads(line[len("data: "):]) for line in lines]


def test_incremental_text_streams_the_whole_decode(tokenizer) -> None:
    from skills.openai_server.detokenizer import IncrementalText

    text = "naïve café 🙂 — done. Then more text follows here."
    ids = tokenizer(text).input_ids
    pieces = IncrementalText(tokenizer)
    assert "".join(pieces.add(t) for t in ids) + pieces.flush() == tokenizer.decode(ids, skip_special_tokens=True)
    stopping, out = IncrementalText(tokenizer, stop=("done.",)), ""
    for t in ids:
        out += stopping.add(t)
        if stopping.stopped:
            break
    assert out + stopping.flush() == "naïve café 🙂 — "


# --- predicted outputs (`prediction`) ---


class PredictingEngine(ScriptedEngine):
    """As ScriptedEngine; where a prediction is given, reports as accepted the script tokens that
    the prediction's tokens match position by position, and the rest of the prediction as rejected."""

    def submit(self, prompt_ids, params):
        if params.prediction is None:
            return super().submit(prompt_ids, params)
        from skills.engine_api import PredictionUsage

        self.requests.append((prompt_ids, params))
        stream = QueueStream.on_running_loop()
        tokens = self.script[: params.max_tokens]
        accepted = 0
        for i, token in enumerate(tokens):
            accepted += i < len(params.prediction) and params.prediction[i] == token
            usage = PredictionUsage(accepted, len(params.prediction) - accepted)
            stream.send(TokenOutput(token, None, "length" if i + 1 == params.max_tokens else None, usage))
        if len(tokens) < params.max_tokens:
            stream.send(TokenOutput(None, None, "stop", usage))
        return stream


@pytest.mark.parametrize("prediction,param", [
    ("some text", "prediction"),
    ({"type": "text", "content": "x"}, "prediction.type"),
    ({"type": "content"}, "prediction.content"),
    ({"type": "content", "content": 5}, "prediction.content"),
    ({"type": "content", "content": [{"type": "image_url"}]}, "prediction.content"),
])
def test_bad_prediction_is_a_400(client, prediction, param) -> None:
    for path, body in (("/v1/completions", {"prompt": "x"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})):
        response = client.post(path, json={**body, "max_tokens": 4, "prediction": prediction})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and "prediction" in error["message"]


def test_prediction_reaches_the_engine_tokenized_and_usage_reports_it(tokenizer) -> None:
    engine = PredictingEngine(tokenizer)
    with TestClient(create_app(engine, ServerInfo("m", "/models/m", 0, server_name="fake"))) as client:
        predicted = TEXT.replace("France", "Spain")
        chat = {"messages": [{"role": "user", "content": "capital?"}], "max_tokens": 30,
                "prediction": {"type": "content", "content": [{"type": "text", "text": predicted}]}}
        body = client.post("/v1/chat/completions", json=chat).json()
        expected = tuple(tokenizer(predicted, add_special_tokens=False).input_ids)
        assert engine.requests[-1][1].prediction == expected
        details = body["usage"]["completion_tokens_details"]
        n = body["usage"]["completion_tokens"]
        assert 0 < details["accepted_prediction_tokens"] < n
        assert details["accepted_prediction_tokens"] + details["rejected_prediction_tokens"] == len(expected)
        chunks = sse(client, "/v1/chat/completions", {**chat, "stream_options": {"include_usage": True}})
        assert chunks[-1]["usage"] == body["usage"]
        # No prediction (or an empty one): zeros, and the engine sees None.
        for extra in ({}, {"prediction": {"type": "content", "content": ""}}):
            body = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, **extra}).json()
            assert engine.requests[-1][1].prediction is None
            assert body["usage"]["completion_tokens_details"] == {"accepted_prediction_tokens": 0,
                                                                  "rejected_prediction_tokens": 0}


# --- prefix-cache hits (`cached_tokens`) ---


def test_cached_tokens_reach_usage_streamed_and_whole(tokenizer) -> None:
    class Engine(ScriptedEngine):
        def submit(self, prompt_ids, params):
            self.requests.append((prompt_ids, params))
            stream = QueueStream.on_running_loop()
            tokens = self.script[: params.max_tokens]
            for i, token in enumerate(tokens):
                stream.send(TokenOutput(token, None, "length" if i + 1 == params.max_tokens else None,
                                        cached_tokens=len(prompt_ids) - 1))
            return stream

    with TestClient(create_app(Engine(tokenizer), ServerInfo("m", "/models/m", 0, server_name="fake"))) as client:
        for path, body in (("/v1/completions", {"prompt": [5, 6, 7, 8]}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})):
            whole = client.post(path, json={**body, "max_tokens": 3}).json()
            cached = whole["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert cached == whole["usage"]["prompt_tokens"] - 1
            chunks = sse(client, path, {**body, "max_tokens": 3,
                                        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
            assert chunks[-1]["usage"] == whole["usage"]
            assert all(c["usage"]["prompt_tokens_details"]["cached_tokens"] == cached for c in chunks
                       if c["choices"] and c["choices"][0].get("text", c["choices"][0].get("delta", {}).get("content")))


def test_no_cached_tokens_without_an_engine_saying_so(client) -> None:
    body = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3}).json()
    assert "prompt_tokens_details" not in body["usage"]
