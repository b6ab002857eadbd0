"""The client side of setting D's protocol as the tests drive it by hand: a clip sent in 1 s
frames, then finalize, and every message the server sends until it closes."""
from __future__ import annotations

import json

import aiohttp
import numpy as np

CHUNK = 16000  # 1 s
CLIP = "espeak-0"  # 3.42 s: three whole chunks and a short last one


def ends(samples: np.ndarray) -> list[int]:
    return [min(start + CHUNK, len(samples)) for start in range(0, len(samples), CHUNK)]


async def stream(url: str, samples: np.ndarray) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url.replace("http", "ws", 1) + "/v1/audio/stream") as ws:
            for start in range(0, len(samples), CHUNK):
                await ws.send_bytes(samples[start:start + CHUNK].astype("<i2").tobytes())
            await ws.send_str(json.dumps({"type": "finalize"}))
            return [m.json() async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
