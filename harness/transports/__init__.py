"""One transport per protocol; each turns one request into one `RequestRecord` (timed events with
the units they carried, the final output, usage counts, an error with its reason).

A scenario names its transport in its YAML (`load.endpoint`) and so its unit: tokens for the
OpenAI routes, audio seconds for the WebSocket audio stream, images for image generation.
"""
from __future__ import annotations

from harness.errors import HarnessError
from harness.transports.base import Transport
from harness.transports.http_image import ImageGeneration
from harness.transports.openai_sse import OpenAIStream
from harness.transports.ws_audio import AudioStream

TRANSPORTS: dict[str, Transport] = {
    "completions": OpenAIStream("completions"),
    "chat": OpenAIStream("chat"),
    "audio_stream": AudioStream(),
    "images": ImageGeneration(),
}


def transport(name: str) -> Transport:
    try:
        return TRANSPORTS[name]
    except KeyError:
        raise HarnessError(f"unknown transport {name!r}; known: {', '.join(sorted(TRANSPORTS))}") from None
