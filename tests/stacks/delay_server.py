"""Test-double stack with known timings, for checking the harness's TTFT/TPOT/ITL.

The output is the deterministic token stream " tok0 tok1 tok2 ...". Measured from the request's
arrival, the first chunk (one token) is sent at ttft_ms; token k (k >= 1) is produced at
ttft_ms + k * token_ms, and tokens are emitted in chunks of tokens_per_chunk, each chunk sent when
its last token is produced. Deadlines are absolute (arrival + offset) so no drift builds up.

`--fault` puts one fault in (tests/test_faulty_stacks.py): `hang-after-headers` (a stream's
headers, then nothing), `hang-before-health` (/health never answers), `error-500` (every second
request), `close-early` (a stream's connection dropped after its first chunk), `bad-usage` (usage
counts 7 tokens more than it sent), `late-port` (binds its port 3 s late), `ignore-sigterm`.

GET /timings gives, per prompt, when its request reached the app (before its body was read) and
when its first token chunk was handed over, on the host's monotonic clock: the TTFT an ideal client
would see, less the wire, against which tests/test_timing.py judges the harness's own clock.

`--prefix-cache` gives it a prefix cache over prompt words (the timings stay as they are), its
hits counted on /metrics as `prefix_cache_hit_tokens`: `honest` empties it on POST
/reset_prefix_cache, `sticky` answers that route 200 all the same and keeps it (a reset claimed,
not done). Without the flag the route answers 200 and there is no cache; `--no-reset-route`
drops the route (404).

    python tests/stacks/delay_server.py --port P [--ttft-ms 200] [--token-ms 20]
        [--tokens-per-chunk 3] [--crash-after N] [--die-after-s S]
        [--prefix-cache none|honest|sticky] [--no-reset-route] [--fault F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, replace

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

DEFAULT_MAX_TOKENS = 16
CHOSEN_LOGPROB = -0.1
CRASH_EXIT_CODE = 3
CRASH_SIGNAL: list[int] = []  # --crash-by-signal: die as a native fault does
FAULTS = ("hang-after-headers", "hang-before-health", "error-500", "close-early", "bad-usage", "late-port",
          "ignore-sigterm")
FAULT: list[str] = []  # --fault
PROCESS_START = time.monotonic()


@dataclass(frozen=True)
class Timing:
    ttft_ms: float
    token_ms: float
    tokens_per_chunk: int


@dataclass(frozen=True)
class Chunk:
    offset_s: float  # send time, relative to the request's arrival
    start: int  # first token index
    end: int  # one past the last token index

    @property
    def tokens(self) -> list[str]:
        return [f" tok{k}" for k in range(self.start, self.end)]


def chunk_schedule(n_tokens: int, timing: Timing) -> list[Chunk]:
    if n_tokens <= 0:
        return []
    chunks = [Chunk(timing.ttft_ms / 1000, 0, 1)]
    start = 1
    while start < n_tokens:
        end = min(start + timing.tokens_per_chunk, n_tokens)
        offset_ms = timing.ttft_ms + (end - 1) * timing.token_ms
        chunks.append(Chunk(offset_ms / 1000, start, end))
        start = end
    return chunks


class State:
    def __init__(self, timing: Timing, crash_after: int | None, prefix_cache: str = "none"):
        self.timing = timing
        self.crash_after = crash_after
        self.forward_passes = 0
        self.requests_total = 0
        self.greedy_requests = 0  # temperature 0 asked for: what an instrument sent, for the tests
        self.prefix_cache = prefix_cache  # "none" | "honest" | "sticky"
        self.cached: list[list[str]] = []  # prompts (as words) whose K/V a later request would reuse
        self.prefix_cache_hit_tokens = 0
        self.timings: dict[str, dict[str, float]] = {}  # prompt -> received, first_sent (monotonic s)

    def look_up(self, words: list[str]) -> None:
        """Count the longest cached prefix of `words` as hits, then cache them. The last word is never
        a hit: a real engine computes at least one prompt token to produce the first output."""
        longest = 0
        for prompt in self.cached:
            common = next((i for i, (a, b) in enumerate(zip(prompt, words)) if a != b), min(len(prompt), len(words)))
            longest = max(longest, common)
        self.prefix_cache_hit_tokens += min(longest, max(len(words) - 1, 0))
        if words not in self.cached:
            self.cached.append(words)

    def metrics(self) -> dict[str, int]:
        out = {"forward_passes": self.forward_passes, "requests_total": self.requests_total,
               "greedy_requests": self.greedy_requests}
        if self.prefix_cache != "none":
            out["prefix_cache_hit_tokens"] = self.prefix_cache_hit_tokens
        return out


@dataclass
class Job:
    kind: str  # "completions" | "chat"
    rid: str
    created: int
    model: str
    n_tokens: int
    prompt_tokens: int
    top_k: int | None  # logprob alternatives asked for; None: no logprobs
    stream: bool
    include_usage: bool
    continuous_usage: bool
    arrival: float  # loop.time() when the request arrived
    crash: bool
    key: str = ""  # the prompt, as /timings names the request
    received: float = 0.0  # time.monotonic() when the request reached the app


# ---------------------------------------------------------------- request parsing


def count_prompt_tokens(prompt) -> int:
    if isinstance(prompt, str):
        return len(prompt.split())
    if isinstance(prompt, list):
        if all(isinstance(x, int) for x in prompt):
            return len(prompt)
        return sum(count_prompt_tokens(p) for p in prompt)
    return 0


def message_text(content) -> str:
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def chat_prompt_tokens(messages) -> int:
    return sum(count_prompt_tokens(message_text(m.get("content"))) for m in messages or [])


def prompt_words(kind: str, body: dict) -> list[str]:
    """The prompt as the prefix cache keys it: its words (token ids as text), messages in order."""
    if kind == "chat":
        return " ".join(message_text(m.get("content")) for m in body.get("messages") or []).split()
    prompt = body.get("prompt", "")
    return prompt.split() if isinstance(prompt, str) else [str(p) for p in prompt]


def requested_tokens(body: dict) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        if body.get(key) is not None:
            return int(body[key])
    return DEFAULT_MAX_TOKENS


def requested_top_k(kind: str, body: dict) -> int | None:
    if kind == "chat":
        if not body.get("logprobs"):
            return None
        return int(body.get("top_logprobs") or 0)
    logprobs = body.get("logprobs")
    return None if logprobs is None else int(logprobs)


def parse_job(kind: str, body: dict, state: State, arrival: float) -> Job:
    state.requests_total += 1
    state.greedy_requests += body.get("temperature") == 0
    options = body.get("stream_options") or {}
    if kind == "chat":
        prompt_tokens = chat_prompt_tokens(body.get("messages"))
    else:
        prompt_tokens = count_prompt_tokens(body.get("prompt", ""))
    return Job(
        kind=kind,
        rid=f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:16]}",
        created=int(time.time()),
        model=body.get("model") or "delay",
        n_tokens=requested_tokens(body),
        prompt_tokens=prompt_tokens,
        top_k=requested_top_k(kind, body),
        stream=bool(body.get("stream")),
        include_usage=bool(options.get("include_usage")),
        continuous_usage=bool(options.get("continuous_usage_stats")),
        arrival=arrival,
        crash=state.crash_after is not None and state.requests_total == state.crash_after,
        key=str(body.get("prompt") if kind == "completions" else body.get("messages")),
    )


# ---------------------------------------------------------------- response building


def top_entries(token: str, k: int) -> list[tuple[str, float]]:
    alternatives = [(f" alt{i}", -2.0 - 0.5 * i) for i in range(1, k)]
    return [(token, CHOSEN_LOGPROB)] + alternatives if k > 0 else []


def completion_logprobs(tokens: list[str], k: int, text_offset: int) -> dict:
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [CHOSEN_LOGPROB] * len(tokens),
        # OpenAI's legacy shape: one {token: logprob} dict per position
        "top_logprobs": [dict(top_entries(t, max(k, 1))) for t in tokens],
        "text_offset": offsets,
    }


def chat_logprob_entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_logprobs(tokens: list[str], k: int) -> dict:
    content = []
    for token in tokens:
        entry = chat_logprob_entry(token, CHOSEN_LOGPROB)
        entry["top_logprobs"] = [chat_logprob_entry(t, lp) for t, lp in top_entries(token, k)]
        content.append(entry)
    return {"content": content}


def logprobs_for(job: Job, tokens: list[str], start: int) -> dict | None:
    if job.top_k is None:
        return None
    if job.kind == "chat":
        return chat_logprobs(tokens, job.top_k)
    text_offset = sum(len(f" tok{k}") for k in range(start))
    return completion_logprobs(tokens, job.top_k, text_offset)


def usage(job: Job, completion_tokens: int) -> dict:
    if "bad-usage" in FAULT:
        completion_tokens += 7
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": job.prompt_tokens + completion_tokens,
    }


def envelope(job: Job, choices: list, usage_: dict | None = None, final: bool = False) -> dict:
    if job.kind == "chat":
        obj = "chat.completion" if final else "chat.completion.chunk"
    else:
        obj = "text_completion"
    out = {"id": job.rid, "object": obj, "created": job.created, "model": job.model, "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def stream_choice(job: Job, chunk: Chunk, finish: str | None) -> dict:
    text = "".join(chunk.tokens)
    choice = {"index": 0}
    if job.kind == "chat":
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    choice["logprobs"] = logprobs_for(job, chunk.tokens, chunk.start)
    choice["finish_reason"] = finish
    return choice


def full_choice(job: Job) -> dict:
    tokens = [f" tok{k}" for k in range(job.n_tokens)]
    choice = {"index": 0}
    if job.kind == "chat":
        choice["message"] = {"role": "assistant", "content": "".join(tokens)}
    else:
        choice["text"] = "".join(tokens)
    choice["logprobs"] = logprobs_for(job, tokens, 0)
    choice["finish_reason"] = "length"
    return choice


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


# ---------------------------------------------------------------- timing and generation


SPIN_S = 0.003


async def sleep_until(deadline: float) -> None:
    """Wake at the deadline to well under a millisecond.

    asyncio.sleep overshoots by up to a millisecond or two (epoll waits in whole milliseconds,
    rounded up), which would show up as late chunks; so sleep to just short of the deadline and
    spin the rest, still yielding to the other streams.
    """
    loop = asyncio.get_running_loop()
    delay = deadline - loop.time() - SPIN_S
    if delay > 0:
        await asyncio.sleep(delay)
    while loop.time() < deadline:
        await asyncio.sleep(0)


def die(reason: str) -> None:
    print(f"delay_server: {reason}", file=sys.stderr, flush=True)
    if CRASH_SIGNAL:
        signal.signal(CRASH_SIGNAL[0], signal.SIG_DFL)
        os.kill(os.getpid(), CRASH_SIGNAL[0])
    os._exit(CRASH_EXIT_CODE)


async def stream_events(job: Job, state: State):
    if job.kind == "chat":
        role = {"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}
        yield sse(envelope(job, [role]))
    schedule = chunk_schedule(job.n_tokens, state.timing)
    for i, chunk in enumerate(schedule):
        await sleep_until(job.arrival + chunk.offset_s)
        state.forward_passes += chunk.end - chunk.start
        finish = "length" if i == len(schedule) - 1 else None
        running = usage(job, chunk.end) if job.continuous_usage else None
        event = sse(envelope(job, [stream_choice(job, chunk, finish)], running))
        if i == 0:
            state.timings[job.key] = {"received": job.received, "first_sent": time.monotonic()}
        yield event
        if "close-early" in FAULT:
            raise ConnectionAbortedError("close-early: dropping the connection mid-stream")
        if job.crash:
            # The generator resumes only after the first chunk went out, so the client has it.
            await asyncio.sleep(state.timing.token_ms / 2000)
            die("crashing on purpose")
    if job.include_usage:
        yield sse(envelope(job, [], usage(job, job.n_tokens)))
    yield sse("[DONE]")


async def complete(job: Job, state: State) -> dict:
    schedule = chunk_schedule(job.n_tokens, state.timing)
    if job.crash:
        await sleep_until(job.arrival + schedule[0].offset_s)
        die("crashing on purpose")
    await sleep_until(job.arrival + schedule[-1].offset_s)
    state.forward_passes += job.n_tokens
    return envelope(job, [full_choice(job)], usage(job, job.n_tokens), final=True)


async def handle(kind: str, request: Request, state: State):
    arrival = asyncio.get_running_loop().time()
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": {"message": "body is not JSON"}}, status_code=400)
    job = replace(parse_job(kind, body, state, arrival), received=request.scope.get(RECEIVED, arrival))
    if job.n_tokens < 1:
        return JSONResponse({"error": {"message": "max_tokens must be >= 1"}}, status_code=400)
    if "error-500" in FAULT and state.requests_total % 2 == 0:
        return JSONResponse({"error": {"message": "error-500: failing every second request"}}, status_code=500)
    if "hang-after-headers" in FAULT and job.stream:
        return StreamingResponse(forever(), media_type="text/event-stream")
    if state.prefix_cache != "none":
        state.look_up(prompt_words(kind, body))
    if job.stream:
        return StreamingResponse(stream_events(job, state), media_type="text/event-stream")
    return JSONResponse(await complete(job, state))


async def forever():
    await asyncio.Event().wait()
    yield ""


RECEIVED = "delay_server.received"


class Stamp:
    """ASGI middleware: stamps each request with the time it reached the app, before any parsing."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope[RECEIVED] = time.monotonic()
        await self.app(scope, receive, send)


def build_app(state: State, reset_route: bool = True) -> FastAPI:
    app = FastAPI()
    app.add_middleware(Stamp)

    @app.get("/health")
    async def health():
        if "hang-before-health" in FAULT:
            await asyncio.Event().wait()
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return state.metrics()

    @app.get("/timings")
    async def timings():
        return state.timings

    async def reset_prefix_cache():
        if state.prefix_cache != "sticky":
            state.cached.clear()
        return {"status": "ok"}

    if reset_route:
        app.post("/reset_prefix_cache")(reset_prefix_cache)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "delay", "object": "model", "owned_by": "tests"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle("completions", request, state)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle("chat", request, state)

    return app


# ---------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ttft-ms", type=float, default=200.0)
    p.add_argument("--token-ms", type=float, default=20.0)
    p.add_argument("--tokens-per-chunk", type=int, default=3)
    p.add_argument("--crash-after", type=int, default=None, help="crash mid-stream on the N-th request")
    p.add_argument("--die-after-s", type=float, default=None, help="exit hard S seconds after start")
    p.add_argument("--crash-by-signal", action="store_true", help="crash by SIGSEGV instead of an exit code")
    p.add_argument("--prefix-cache", choices=("none", "honest", "sticky"), default="none",
                   help="a prefix cache whose hits /metrics counts; sticky: POST /reset_prefix_cache keeps it")
    p.add_argument("--no-reset-route", action="store_true", help="no POST /reset_prefix_cache (404)")
    p.add_argument("--fault", choices=FAULTS, default=None, help="one fault put in on purpose")
    args = p.parse_args(argv)
    if args.fault:
        FAULT.append(args.fault)
    if args.crash_by_signal:
        CRASH_SIGNAL.append(signal.SIGSEGV)
    if args.tokens_per_chunk < 1:
        p.error("--tokens-per-chunk must be >= 1")
    return args


async def serve(args: argparse.Namespace) -> None:
    timing = Timing(args.ttft_ms, args.token_ms, args.tokens_per_chunk)
    if "late-port" in FAULT:
        await asyncio.sleep(3)
    app = build_app(State(timing, args.crash_after, args.prefix_cache), reset_route=not args.no_reset_route)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", loop="asyncio", workers=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            return await task  # startup failed; uvicorn has logged why
        await asyncio.sleep(0.01)
    if args.die_after_s is not None:
        remaining = args.die_after_s - (time.monotonic() - PROCESS_START)
        asyncio.get_running_loop().call_later(max(remaining, 0), die, "dying on purpose")
    if "ignore-sigterm" in FAULT:  # after uvicorn's own handlers are in
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
    print(f"delay_server ready on port {args.port}", file=sys.stderr, flush=True)
    await task


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
