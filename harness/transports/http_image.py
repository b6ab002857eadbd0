"""Text-to-image over HTTP JSON: `POST /v1/images/generations` with response_format b64_json.

Unit: images. One event when the answer arrives, carrying the images it holds; each must be a
PNG. The first image's bytes stay in memory (`record.blob`) for the scenario's oracle; the record
file keeps their hash and size, and `final` their size in pixels.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import time

import aiohttp

from harness.client import MalformedStream, error_text, json_object
from harness.records import Event, RequestRecord
from harness.transports.base import Transport

ROUTE = "/v1/images/generations"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header chunk; MalformedStream for anything else."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise MalformedStream(f"an image that is not a PNG (starts {data[:16]!r})")
    return struct.unpack(">II", data[16:24])


def _images(answer: dict) -> list[bytes]:
    items = answer.get("data")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise MalformedStream(f"data is {str(items)[:80]}, not a list of images")
    out = []
    for item in items:
        encoded = item.get("b64_json")
        if not isinstance(encoded, str):
            raise MalformedStream(f"an image's b64_json is {str(encoded)[:80]}, not a string")
        try:
            out.append(base64.b64decode(encoded, validate=True))
        except binascii.Error as exc:
            raise MalformedStream(f"an image's b64_json is not base64 ({exc})") from None
    return out


class ImageGeneration(Transport, unit="images", unit_source="images_returned"):
    async def exchange(self, client: aiohttp.ClientSession, base_url: str, payload: dict, record: RequestRecord,
                       start: float) -> None:
        async with client.post(base_url + ROUTE, json={**payload, "response_format": "b64_json"}) as response:
            body = await response.read()
            now = time.perf_counter() - start
            if response.status != 200:
                record.error = error_text(response.status, body)
                return
        images = _images(json_object(body, "the answer"))
        sizes = [png_size(image) for image in images]
        record.blob = images[0]
        record.final = {"images": len(images), "width": sizes[0][0], "height": sizes[0][1],
                        "sha256": hashlib.sha256(images[0]).hexdigest()}
        record.events.append(Event(now, len(images)))
        record.finish_reason = "stop"
