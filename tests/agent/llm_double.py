"""A test double for a hosted LLM: an OpenAI-compatible chat endpoint that replays scripted replies.

The script is a JSON object from keys to replies (any JSON value, sent back as the message text).
A request's key comes from the tag on the first line of its user message,
`[role=implementer round=2 attempt=1]`: the most specific of `implementer:2:1`, `implementer:2`,
`implementer` that the script holds answers. Every request is appended to --log as a JSON line.

    python tests/agent/llm_double.py --port P --script script.json --log requests.jsonl
"""
from __future__ import annotations

import argparse
import json
import re
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

TAG = re.compile(r"\[role=(\w+) round=(\d+)(?: attempt=(\d+))?\]")


def key_candidates(text: str) -> list[str]:
    m = TAG.search(text)
    if not m:
        return []
    role, rnd, attempt = m.groups()
    keys = [f"{role}:{rnd}:{attempt}"] if attempt else []
    return keys + [f"{role}:{rnd}", role]


def create_app(script: dict, log_path: str | None):
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
        keys = key_candidates(user)
        key = next((k for k in keys if k in script), None)
        if log_path:
            with open(log_path, "a") as f:
                f.write(json.dumps({"keys": keys, "answered": key, "model": body.get("model")}) + "\n")
        if key is None:
            return JSONResponse({"error": {"message": f"no scripted reply for {keys}"}}, status_code=400)
        reply = script[key]
        text = reply if isinstance(reply, str) else json.dumps(reply)
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
        completion_tokens = len(text) // 4
        return {"id": f"chatcmpl-double-{time.monotonic_ns()}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "double"),
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--script", required=True)
    parser.add_argument("--log", default=None)
    args = parser.parse_args()
    import uvicorn

    with open(args.script) as f:
        script = json.load(f)
    uvicorn.run(create_app(script, args.log), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
