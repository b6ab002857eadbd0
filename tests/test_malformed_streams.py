"""A broken stack's stream fails its own request with a reason; the cell and the other requests go on.

The double is a real aiohttp server whose answer depends on the prompt: a well-formed stream for
"good", and for each other prompt one way a stack can break the protocol.
"""
from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from aiohttp import web

from harness.client import post_json, session
from harness.loadgen import LoadPoint, run_load_point
from harness.metrics import summarize

GOOD = [{"choices": [{"index": 0, "text": "a"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
        {"choices": [{"index": 0, "text": "b", "finish_reason": "length"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}]

BROKEN = {  # prompt -> (raw SSE data lines, what the record's error must say)
    "not-json": (["{\"choices\": [", "[DONE]"], "not JSON"),
    "not-an-object": (["5", "[DONE]"], "not an object"),
    "usage-a-list": ([json.dumps({"choices": [{"text": "a"}], "usage": [1, 2]})], "usage is [1, 2]"),
    "usage-a-string-count": ([json.dumps({"choices": [{"text": "a"}], "usage": {"completion_tokens": "7"}})],
                             "not a count"),
    "negative-count": ([json.dumps({"choices": [{"text": "a"}], "usage": {"completion_tokens": -2}})],
                       "not a count"),
    "choices-a-dict": ([json.dumps({"choices": {"text": "a"}})], "not a list of objects"),
    "text-a-number": ([json.dumps({"choices": [{"text": 5}]})], "not a string"),
    "delta-a-string": ([json.dumps({"choices": [{"delta": "x"}]})], "not an object"),
    "error-a-string": ([json.dumps({"error": "out of memory"})], "stream error: out of memory"),
    "bad-utf8": ([b"\xff\xfe".decode("latin-1")], "malformed stream"),
}


def _sse(lines: list[str]) -> bytes:
    return "".join(f"data: {line}\n\n" for line in lines).encode("latin-1")


async def _handle(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    prompt = body.get("prompt")
    if not body.get("stream"):
        return web.Response(text="{not json" if prompt == "bad-json" else "[1, 2]", content_type="application/json")
    lines = [json.dumps(c) for c in GOOD] + ["[DONE]"] if prompt == "good" else BROKEN[prompt][0]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_sse(lines))
    await response.write_eof()
    return response


@contextlib.asynccontextmanager
async def broken_stack():
    """The double, served on a free port for the test's duration; yields its base URL."""
    app = web.Application()
    app.router.add_post("/v1/completions", _handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


async def _run(payloads: list[dict]):
    async with broken_stack() as url:
        return await run_load_point(url, "completions", payloads, LoadPoint(num_prompts=len(payloads), concurrency=2), 30)


def test_each_malformed_stream_fails_its_request_with_a_reason_and_the_cell_goes_on():
    prompts = ["good", *BROKEN, "good"]
    result = asyncio.run(_run([{"model": "m", "prompt": p, "max_tokens": 2} for p in prompts]))
    assert result.crashed is None and len(result.records) == len(prompts)
    for prompt, record in zip(prompts, result.records):
        if prompt == "good":
            assert record.ok and record.output_units == 2 and record.text == "ab", record
        else:
            assert not record.ok and BROKEN[prompt][1] in (record.error or ""), (prompt, record.error)
    metrics = summarize(result.records)
    assert metrics["completed"] == 2 and metrics["failed"] == len(BROKEN)


@pytest.mark.parametrize("prompt, reason", [("bad-json", "not JSON"), ("list", "not an object")])
def test_a_non_streaming_answer_that_is_not_a_json_object_is_refused(prompt, reason):
    async def go():
        async with broken_stack() as url, session(10) as client:
            await post_json(client, url, "completions", {"prompt": prompt})

    with pytest.raises(ValueError, match=reason):
        asyncio.run(go())
