"""Test-double stack for the protocols that are not text: a WebSocket audio stream and image generation.

- `WS /v1/audio/stream` echoes what it heard: after each binary frame of PCM16 audio, a partial
  `{"type": "partial", "text": "<samples so far>", "chunk": i}` (after `--chunk-ms` of "work"); after
  `{"type": "finalize"}`, `{"type": "final", "text": <sha256 of every byte received, 16 hex>}`. A text
  message that is not a JSON object, or any other type, gets `{"type": "error", ...}`.
- `POST /v1/images/generations` paints a `width` x `height` PNG (default 32 x 32) in one colour
  drawn from sha256(prompt, seed), after `--image-ms`; a missing prompt is a 400 with a message.
- `GET /metrics` counts frames and images (JSON); `GET /health`.

`--mode` says how it misbehaves: `honest`; `deaf` drops the last frame from its final transcript;
`unseeded` paints every image of a prompt alike, whatever the seed; `garbage` answers a frame with
text that is not JSON and an image request with bytes that are not a PNG.

    python tests/stacks/media_server.py --port P [--mode honest] [--chunk-ms 20] [--image-ms 50]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json

import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from PIL import Image

SIZE = 32


def expected_transcript(frames: list[bytes]) -> str:
    return hashlib.sha256(b"".join(frames)).hexdigest()[:16]


def expected_png(prompt: str, seed: int | None, width: int = SIZE, height: int = SIZE) -> bytes:
    digest = hashlib.sha256(f"{prompt}\0{seed}".encode()).digest()
    buf = io.BytesIO()
    Image.new("RGB", (width, height), tuple(digest[:3])).save(buf, format="PNG")
    return buf.getvalue()


def build_app(mode: str, chunk_s: float, image_s: float) -> FastAPI:
    app = FastAPI()
    counters = {"audio_frames": 0, "images": 0}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return counters

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "media-double", "object": "model", "runtime": {"mode": mode}}]}

    @app.websocket("/v1/audio/stream")
    async def audio(ws: WebSocket):
        await ws.accept()
        frames: list[bytes] = []
        try:
            while True:
                message = await ws.receive()
                if message.get("bytes") is not None:
                    frames.append(message["bytes"])
                    counters["audio_frames"] += 1
                    await asyncio.sleep(chunk_s)
                    if mode == "garbage":
                        await ws.send_text("<partial>")
                        continue
                    samples = sum(len(f) for f in frames) // 2
                    await ws.send_json({"type": "partial", "text": str(samples), "chunk": len(frames) - 1})
                elif message.get("text") is not None:
                    try:
                        request = json.loads(message["text"])
                    except ValueError:
                        request = None
                    if not isinstance(request, dict) or request.get("type") != "finalize":
                        await ws.send_json({"type": "error", "message": f"expected finalize, got {message['text'][:40]!r}"})
                        continue
                    heard = frames[:-1] if mode == "deaf" else frames
                    await ws.send_json({"type": "final", "text": expected_transcript(heard)})
                    await ws.close()
                    return
                else:
                    return
        except WebSocketDisconnect:
            return

    @app.post("/v1/images/generations")
    async def images(request: Request):
        body = await request.json()
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str) or not prompt:
            return JSONResponse({"error": {"message": "prompt: a non-empty string is required"}}, status_code=400)
        await asyncio.sleep(image_s)
        seed = None if mode == "unseeded" else body.get("seed")
        png = expected_png(prompt, seed, int(body.get("width", SIZE)), int(body.get("height", SIZE)))
        counters["images"] += 1
        if mode == "garbage":
            png = b"GIF89a" + png[6:]
        return {"created": 0, "data": [{"b64_json": base64.b64encode(png).decode()}]}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["honest", "deaf", "unseeded", "garbage"], default="honest")
    p.add_argument("--chunk-ms", type=float, default=20.0)
    p.add_argument("--image-ms", type=float, default=50.0)
    args = p.parse_args()
    app = build_app(args.mode, args.chunk_ms / 1000, args.image_ms / 1000)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
