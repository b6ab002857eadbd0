"""The hf-reference server, run for real on SmolLM2-135M-Instruct as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from harness.assets import ensure_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HEALTH_DEADLINE_S = 180
PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is 2+2? Answer with one number."}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + HEALTH_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"server not healthy after {HEALTH_DEADLINE_S}s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def base_url(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(model_dir, tmp_path_factory)


def _serve(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, *args: str) -> Iterator[str]:
    """The server on `model_dir` (extra command-line `args`) until the generator is closed."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("hf_reference") / "server.log"
    cmd = [sys.executable, "-m", "baselines.hf_reference", "--model", str(model_dir), "--port", str(port), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log_path)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    """The same weights in-process, for direct `model.generate`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
    return model, tokenizer


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60)


def ok(url: str, path: str, body: dict) -> dict:
    response = post(url, path, body)
    assert response.status_code == 200, response.text
    return response.json()


def stream(url: str, path: str, body: dict) -> list[dict]:
    """The parsed SSE chunks of one streamed request; checks it ends with [DONE]."""
    chunks, done = [], False
    with httpx.stream("POST", url + path, json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                continue
            chunks.append(json.loads(data))
    assert done, "stream did not end with [DONE]"
    return chunks


def completion_text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"])


def chat_text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_health_models_metrics(base_url: str, model_dir: Path) -> None:
    assert httpx.get(base_url + "/health").json() == {"status": "ok"}
    models = httpx.get(base_url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == model_dir.name
    metrics = httpx.get(base_url + "/metrics").json()
    assert set(metrics) >= {"forward_passes", "requests_total", "requests_running", "requests_waiting",
                            "prompt_tokens_total", "generation_tokens_total"}
    assert httpx.post(base_url + "/reset_prefix_cache").json() == {"reset": True}


def test_greedy_matches_transformers_generate(base_url: str, reference) -> None:
    import torch

    model, tokenizer = reference
    ids = torch.tensor([tokenizer(PROMPT).input_ids])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
    new = [t for t in out[0, ids.shape[1]:].tolist()]
    if new and new[-1] == tokenizer.eos_token_id:
        new = new[:-1]
    body = ok(base_url, "/v1/completions", {"model": "x", "prompt": PROMPT, "max_tokens": 12,
                                            "temperature": 0, "logprobs": 1})
    choice = body["choices"][0]
    assert choice["logprobs"]["tokens"] == [tokenizer.decode([t]) for t in new]
    assert choice["text"] == tokenizer.decode(new, skip_special_tokens=True)
    assert body["usage"]["completion_tokens"] == len(new)
    assert body["usage"]["prompt_tokens"] == ids.shape[1]


ANSWER = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99},
                                          "unit": {"type": "string", "enum": ["apples", "pears"]}},
          "required": ["answer", "unit"], "additionalProperties": False}


@pytest.mark.parametrize("chat", [True, False])
def test_response_format_is_the_harness_constrained_reference(base_url: str, model_dir: Path, chat: bool) -> None:
    # The reference server's per-token mask and the harness's masked greedy reference are two
    # codes for one decoding: same tokens, same (masked) logprobs.
    from jsonschema import validate

    from harness.generation import Prompt
    from harness.reference import generate_reference

    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}}
    text = "Two apples and three apples make how many? Reply in JSON."
    ref = generate_reference(model_dir, [Prompt("q", text, chat, 40, response_format=fmt)], 3)[0]
    body = ({"messages": [{"role": "user", "content": text}], "logprobs": True, "top_logprobs": 3} if chat
            else {"prompt": text, "logprobs": 3})
    reply = ok(base_url, "/v1/chat/completions" if chat else "/v1/completions",
               body | {"max_tokens": 40, "temperature": 0, "response_format": fmt})["choices"][0]
    got = reply["message"]["content"] if chat else reply["text"]
    validate(json.loads(got), ANSWER)
    assert got == ref.text and reply["finish_reason"] == "stop" == ref.finish_reason
    first = (reply["logprobs"]["content"][0]["top_logprobs"] if chat
             else [{"token": t, "logprob": v} for t, v in reply["logprobs"]["top_logprobs"][0].items()])
    assert {e["token"]: round(e["logprob"], 3) for e in first} == {t: round(v, 3) for t, v in ref.top[0].items()}


def test_completion_stream_equals_non_stream(base_url: str) -> None:
    request = {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "logprobs": 1,
               "stream_options": {"include_usage": True}}
    whole = ok(base_url, "/v1/completions", {k: v for k, v in request.items() if k != "stream_options"})
    chunks = stream(base_url, "/v1/completions", request)
    assert completion_text(chunks) == whole["choices"][0]["text"]
    token_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["logprobs"]]
    assert len(token_chunks) == chunks[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert chunks[-1]["choices"] == []
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == whole["choices"][0]["finish_reason"]


def test_chat_stream_equals_non_stream_and_starts_with_role(base_url: str) -> None:
    request = {"messages": CHAT, "max_tokens": 12, "temperature": 0}
    whole = ok(base_url, "/v1/chat/completions", request)
    chunks = stream(base_url, "/v1/chat/completions", request)
    first = chunks[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""} and first["finish_reason"] is None
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chat_text(chunks) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "stop"


def test_continuous_usage_grows_by_one_per_chunk(base_url: str) -> None:
    chunks = stream(base_url, "/v1/completions", {
        "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "ignore_eos": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    token_chunks = [c for c in chunks if c["choices"]]
    assert [c["usage"]["completion_tokens"] for c in token_chunks] == [1, 2, 3, 4, 5, 6]
    assert token_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_completion_logprobs_top5(base_url: str) -> None:
    body = ok(base_url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 6, "temperature": 0,
                                            "logprobs": 5, "ignore_eos": True})
    logprobs = body["choices"][0]["logprobs"]
    n = body["usage"]["completion_tokens"]
    assert n == 6
    assert all(len(logprobs[key]) == n for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"))
    assert logprobs["text_offset"][0] == 0
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert 5 <= len(top) <= 6
        assert top[token] == pytest.approx(logprob)
        assert logprob == pytest.approx(max(top.values()))  # greedy picks the argmax


def test_chat_logprobs_top5(base_url: str) -> None:
    body = ok(base_url, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 6, "temperature": 0,
                                                 "logprobs": True, "top_logprobs": 5})
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] > 0
    assert "".join(e["token"] for e in content) == body["choices"][0]["message"]["content"]
    for entry in content:
        assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 5
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"])
        assert entry["token"] in [t["token"] for t in entry["top_logprobs"]]
    chunks = stream(base_url, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 6, "temperature": 0,
                                                       "logprobs": True, "top_logprobs": 5})
    streamed = [c["choices"][0]["logprobs"]["content"][0] for c in chunks
                if c["choices"] and c["choices"][0]["logprobs"]]
    assert [e["token"] for e in streamed] == [e["token"] for e in content]


def test_ignore_eos_generates_exactly_max_tokens(base_url: str) -> None:
    natural = ok(base_url, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 20, "temperature": 0})
    assert natural["choices"][0]["finish_reason"] == "stop"
    assert natural["usage"]["completion_tokens"] < 20
    forced = ok(base_url, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 20, "temperature": 0,
                                                   "ignore_eos": True})
    assert forced["usage"]["completion_tokens"] == 20
    assert forced["choices"][0]["finish_reason"] == "length"
    assert forced["choices"][0]["message"]["content"].startswith(natural["choices"][0]["message"]["content"])


def test_stop_string(base_url: str) -> None:
    request = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    full = ok(base_url, "/v1/completions", request)["choices"][0]["text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    expected = full[: full.index(stop)]
    stopped = ok(base_url, "/v1/completions", {**request, "stop": [stop, "never-appears"]})
    assert stopped["choices"][0]["text"] == expected
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] < 12
    chunks = stream(base_url, "/v1/completions", {**request, "stop": stop})
    assert completion_text(chunks) == expected


def test_token_id_prompt(base_url: str, reference) -> None:
    _, tokenizer = reference
    ids = tokenizer(PROMPT).input_ids
    request = {"max_tokens": 8, "temperature": 0}
    from_text = ok(base_url, "/v1/completions", {**request, "prompt": PROMPT})
    from_ids = ok(base_url, "/v1/completions", {**request, "prompt": ids})
    from_batch_of_one = ok(base_url, "/v1/completions", {**request, "prompt": [ids]})
    assert from_ids["choices"][0]["text"] == from_text["choices"][0]["text"]
    assert from_batch_of_one["choices"][0]["text"] == from_text["choices"][0]["text"]
    assert from_ids["usage"]["prompt_tokens"] == len(ids)


def test_openai_client(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    completion = client.completions.create(model="any", prompt=PROMPT, max_tokens=6, temperature=0)
    streamed = client.completions.create(model="any", prompt=PROMPT, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text
    assert completion.usage.completion_tokens_details.accepted_prediction_tokens == 0

    chat = client.chat.completions.create(model="any", messages=CHAT, max_tokens=8, temperature=0,
                                          extra_body={"prediction": {"type": "content", "content": "4"}})
    chunks = list(client.chat.completions.create(model="any", messages=CHAT, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.completions.create(model="any", prompt=PROMPT, max_tokens=4, n=2)


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": "", "max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2], [3, 4]], "max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": PROMPT, "n": 2}, "n"),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": PROMPT, "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": 9000}, "max_tokens"),
    ("/v1/completions", {"prompt": PROMPT, "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": PROMPT, "echo": True}, "echo"),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": "4"}, "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}, "response_format"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_schema"}}, "response_format"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "xml"}}, "response_format"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
])
def test_bad_request(base_url: str, path: str, body: dict, param: str) -> None:
    response = post(base_url, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_too_long_message_says_the_lengths(base_url: str) -> None:
    error = post(base_url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 9000}).json()["error"]
    assert "8192" in error["message"] and "9000" in error["message"]
    assert "Invalid type: nonsense" in post(base_url, "/v1/completions", {
        "prompt": PROMPT, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}
    ).json()["error"]["message"]


def test_malformed_json_and_unknown_route(base_url: str) -> None:
    response = httpx.post(base_url + "/v1/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    missing = httpx.get(base_url + "/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["message"]


def test_forward_passes_grow(base_url: str) -> None:
    before = httpx.get(base_url + "/metrics").json()
    ok(base_url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    after = httpx.get(base_url + "/metrics").json()
    assert after["forward_passes"] - before["forward_passes"] == 5  # one prefill (makes token 1) + 4 decodes
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == 5
    assert after["requests_total"] == before["requests_total"] + 1
    assert after["requests_running"] == after["requests_waiting"] == 0


def test_concurrent_streams_are_serialized(base_url: str) -> None:
    results: dict[int, list[float]] = {}

    def run(i: int) -> None:
        times = []
        with httpx.stream("POST", base_url + "/v1/completions", timeout=60, json={
                "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    times.append(time.monotonic())
        results[i] = times

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [0, 1] and all(len(times) == 8 for times in results.values())
    first, second = sorted(results.values())
    assert first[-1] <= second[0]  # the second request generated only after the first finished


def test_disconnect_cancels_generation(base_url: str) -> None:
    before = httpx.get(base_url + "/metrics").json()
    with httpx.stream("POST", base_url + "/v1/completions", timeout=60, json={
            "prompt": PROMPT, "max_tokens": 500, "temperature": 0, "ignore_eos": True, "stream": True}) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n >= 3:
                break
    deadline = time.monotonic() + 10
    while httpx.get(base_url + "/metrics").json()["requests_running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    after = httpx.get(base_url + "/metrics").json()
    assert after["requests_running"] == 0
    assert after["forward_passes"] - before["forward_passes"] < 100


def test_seeded_sampling_is_reproducible(base_url: str) -> None:
    request = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "top_p": 0.95, "seed": 1234,
               "ignore_eos": True}
    first = ok(base_url, "/v1/completions", request)["choices"][0]["text"]
    assert ok(base_url, "/v1/completions", request)["choices"][0]["text"] == first


def test_incremental_text_matches_whole_decode(reference) -> None:
    from baselines.hf_reference.detokenizer import IncrementalText

    _, tokenizer = reference
    text = "naïve café 🙂 — done. Then more text follows here."
    ids = tokenizer(text).input_ids
    pieces = IncrementalText(tokenizer)
    streamed = "".join(pieces.add(t) for t in ids) + pieces.flush()
    assert streamed == tokenizer.decode(ids, skip_special_tokens=True)

    stopping = IncrementalText(tokenizer, stop=("done.",))
    out = ""
    for t in ids:
        out += stopping.add(t)
        if stopping.stopped:
            break
    assert out + stopping.flush() == "naïve café 🙂 — "


def test_generation_failure_mid_stream_sends_error_event(model_dir: Path, reference) -> None:
    """A generate that fails after one token: the stream ends with an error event; non-stream gets a 500."""
    import torch
    from fastapi.testclient import TestClient

    from baselines.hf_reference.generator import Generator
    from baselines.hf_reference.loader import LoadedModel
    from baselines.hf_reference.server import ServerInfo, create_app

    _, tokenizer = reference

    class FailingModel(torch.nn.Module):
        device = torch.device("cpu")

        def generate(self, input_ids, streamer, **kwargs):
            streamer.put(input_ids)
            streamer.put(torch.tensor([tokenizer(" Paris").input_ids[0]]))
            raise RuntimeError("boom")

    generator = Generator(LoadedModel(FailingModel(), tokenizer, frozenset({2}), 2, 8192, 49152))
    app = create_app(generator, ServerInfo("failing", str(model_dir), 0))
    with TestClient(app) as client:
        with client.stream("POST", "/v1/completions", json={"prompt": PROMPT, "stream": True}) as response:
            events = [line for line in response.iter_lines() if line]
        assert json.loads(events[0][len("data: "):])["choices"][0]["text"] == " Paris"
        assert "boom" in json.loads(events[-1][len("data: "):])["error"]["message"]
        assert "data: [DONE]" not in events
        response = client.post("/v1/completions", json={"prompt": PROMPT})
        assert response.status_code == 500 and "boom" in response.json()["error"]["message"]
    generator.shutdown()


# --- a hybrid model: olmo_hybrid (GatedDeltaNet and full attention), fp32 ---


@pytest.fixture(scope="module")
def hybrid_dir() -> Path:
    return ensure_model("olmo-hybrid-tiny")


@pytest.fixture(scope="module")
def hybrid_url(hybrid_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(hybrid_dir, tmp_path_factory, "--dtype", "auto")  # as its spec starts it


def test_hybrid_token_id_prompt_streams_what_transformers_generates(hybrid_url: str, hybrid_dir: Path) -> None:
    """Setting C's request shape (token ids, ignore_eos, streamed with usage) on olmo_hybrid: the
    served tokens are `OlmoHybridForCausalLM.generate`'s, in the folder's fp32. The prompt spans
    several of the GatedDeltaNet's 64-token prefill chunks and a partial one."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rng = random.Random(3)
    ids = [rng.randrange(3, 49152) for _ in range(300)]
    n = 24
    chunks = stream(hybrid_url, "/v1/completions", {
        "prompt": ids, "max_tokens": n, "temperature": 0, "ignore_eos": True, "logprobs": 1,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    tokenizer = AutoTokenizer.from_pretrained(hybrid_dir)
    model = AutoModelForCausalLM.from_pretrained(hybrid_dir, dtype="auto").eval()
    assert model.dtype == torch.float32 and type(model).__name__ == "OlmoHybridForCausalLM"
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                             eos_token_id=[], pad_token_id=tokenizer.pad_token_id or 2)
    expected = out[0, len(ids):].tolist()
    served = [t for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
              for t in c["choices"][0]["logprobs"]["tokens"]]
    assert served == [tokenizer.decode([t]) for t in expected]
    assert completion_text(chunks) == tokenizer.decode(expected)
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens"] == len(ids) and usage["completion_tokens"] == n
    assert [c["usage"]["completion_tokens"] for c in chunks if c["choices"]] == list(range(1, n + 1))
