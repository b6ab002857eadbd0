"""Test-double stack for setting B's oracle: predicted outputs done right, and three ways wrong.

The reply is deterministic: the words of the last user message, in order, one token each
(" w0 w1 ..."), up to max_tokens, then it stops. `--mode` says what `prediction` does:

- honest: nothing to the output; the prediction's words that the reply copies are reported as
  accepted (usage.completion_tokens_details and /metrics spec_accepted_tokens);
- cheat:  the reply is the prediction's words instead (lossy: the oracle must fail it);
- idle:   nothing to the output, and zero accepted tokens reported (the engagement guard must fail it);
- silent: nothing to the output, no usage details and no counters at all;
- cached: ignores `prediction` like vLLM, but has a prefix cache whose reuse changes the reply's
  last token (as reused bf16 K/V can flip a near-tie); POST /reset_prefix_cache empties it;
- rounds: honest about `prediction`, but its speculative path rounds differently from plain
  decoding, with or without a prediction (as engine-b's oneDNN verify steps did on an AMD EPYC):
  the reply's last token is another one unless it was started with --no-spec;
- garbage: honest when asked for logprobs (the accuracy pass), streams fast words of its own
  otherwise (a load point's requests): the measured outputs' check must fail it;
- overcount: honest output, but its usage counts two tokens more than it sent;
- claims: honest output and accepted counts, but a forward pass for every token (no saving).

`--no-spec` (or the request field `"speculate": false`) is the stack with its optimisation off (what
a spec's `off_switch: {prediction: {args: [--no-spec]}}` launches): the reply as without a prediction,
nothing accepted, nothing reported.

    python tests/stacks/prediction_server.py --port P --mode honest [--no-spec]
"""
from __future__ import annotations

import argparse
import json
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

TOP = [(" alt1", -2.0), (" alt2", -2.5), (" alt3", -3.0), (" alt4", -3.5)]


def build_app(mode: str, speculate: bool = True) -> FastAPI:
    app = FastAPI()
    counters = {"forward_passes": 0, "spec_proposed_tokens": 0, "spec_accepted_tokens": 0}
    cached: set[str] = set()  # prompts whose K/V a later request would reuse (mode "cached")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return {"forward_passes": counters["forward_passes"]} if mode == "silent" else counters

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache():
        cached.clear()
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        card = {"id": "prediction-double", "object": "model", "runtime": {"speculation": speculate}}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        text = str(body["messages"][-1]["content"])
        on = speculate and body.get("speculate", True) is not False  # the request field turns it off too
        predicted = ((body.get("prediction") or {}).get("content")) or None if on else None
        source = predicted if (mode == "cheat" and predicted) else text
        tokens = [" " + w for w in source.split()][: int(body.get("max_tokens") or 16)]
        if mode == "garbage" and not body.get("logprobs"):
            tokens = [" fast"] * len(tokens)
        # Each token's top alternatives; a "rounded" token is a near-tie: the plain one is its runner-up.
        tops = [[(t, -0.1)] + TOP for t in tokens]
        if mode == "rounds" and on and tokens:
            tops[-1] = [(TOP[0][0], -0.1), (tokens[-1], -0.1001)] + TOP[1:]
            tokens[-1] = TOP[0][0]
        if mode == "cached":
            if text in cached:
                tokens[-1] = " cached"
            cached.add(text)
        finish = "stop" if len(tokens) < int(body.get("max_tokens") or 16) else "length"
        accepted = 0
        if predicted and mode in ("honest", "cheat", "rounds", "garbage", "overcount", "claims"):
            guess = set(predicted.split())
            accepted = sum(1 for t in tokens if t.strip() in guess)
        counters["forward_passes"] += len(tokens) + 1 - (0 if mode == "claims" else accepted)
        counters["spec_proposed_tokens"] += len(predicted.split()) if predicted and mode != "silent" else 0
        counters["spec_accepted_tokens"] += accepted
        counted = len(tokens) + 2 if mode == "overcount" else len(tokens)
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": counted,
                 "total_tokens": len(text.split()) + counted}
        if predicted and mode not in ("silent", "cached"):
            usage["completion_tokens_details"] = {"accepted_prediction_tokens": accepted,
                                                  "rejected_prediction_tokens": len(predicted.split()) - accepted}
        want_logprobs = bool(body.get("logprobs"))

        def logprobs(positions: range) -> dict | None:
            if not want_logprobs:
                return None
            k = int(body.get("top_logprobs") or 0)
            return {"content": [{"token": tokens[i], "logprob": tops[i][0][1], "top_logprobs":
                                 [{"token": a, "logprob": lp} for a, lp in tops[i][:k]]} for i in positions]}

        rid, created = "chatcmpl-double", int(time.time())
        if not body.get("stream"):
            return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": "prediction-double",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                                              "logprobs": logprobs(range(len(tokens))), "finish_reason": finish}],
                                 "usage": usage})

        def events():
            def sse(obj) -> str:
                return f"data: {json.dumps(obj)}\n\n"
            yield sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                       "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
            for i, t in enumerate(tokens):
                yield sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                           "choices": [{"index": 0, "delta": {"content": t}, "logprobs": logprobs(range(i, i + 1)),
                                        "finish_reason": finish if i == len(tokens) - 1 else None}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield sse({"id": rid, "object": "chat.completion.chunk", "created": created, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("honest", "cheat", "idle", "silent", "cached", "rounds", "garbage", "overcount",
                                      "claims"),
                   default="honest")
    p.add_argument("--no-spec", action="store_true", help="the optimisation off: `prediction` ignored")
    args = p.parse_args()
    uvicorn.run(build_app(args.mode, speculate=not args.no_spec), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
