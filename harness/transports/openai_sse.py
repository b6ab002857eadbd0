"""OpenAI server-sent events: /v1/completions and /v1/chat/completions with stream=true.

Unit: tokens. An event per chunk that carried at least one generated token (a role-only or
usage-only chunk is none); the tokens a chunk carried come from the server's running usage count
(continuous usage stats), else its logprobs entries, else one per chunk with text.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from harness.client import ENDPOINTS, MalformedStream, error_text, json_object
from harness.generation import usage_details
from harness.records import Event, RequestRecord
from harness.transports.arrivals import Arrivals
from harness.transports.base import Transport


def _text(value) -> str:
    if value is not None and not isinstance(value, str):
        raise MalformedStream(f"a choice's text is {str(value)[:80]}, not a string")
    return value or ""


def _chunk_text(choice: dict) -> str:
    if "text" in choice:
        return _text(choice.get("text"))
    delta = choice.get("delta") or {}
    if not isinstance(delta, dict):
        raise MalformedStream(f"a choice's delta is {str(delta)[:80]}, not an object")
    # Reasoning models stream their thinking first; it is generated output all the same.
    return _text(delta.get("content")) + _text(delta.get("reasoning_content") or delta.get("reasoning"))


def _logprob_count(choice: dict) -> int | None:
    logprobs = choice.get("logprobs")
    if not logprobs:
        return None
    if "tokens" in logprobs:
        return len(logprobs["tokens"] or [])
    return len(logprobs.get("content") or [])


def _count(usage: dict, key: str) -> int | None:
    value = usage.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise MalformedStream(f"usage.{key} is {value!r}, not a count")
    return value


def parse_chunk(data: str) -> dict:
    """One SSE data payload as a chunk object, its usage and choices checked for shape."""
    chunk = json_object(data, "a chunk")
    usage = chunk.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            raise MalformedStream(f"usage is {usage!r}, not an object")
        for key in ("prompt_tokens", "completion_tokens"):
            _count(usage, key)
    choices = chunk.get("choices")
    if choices is not None and not (isinstance(choices, list) and all(isinstance(c, dict) for c in choices)):
        raise MalformedStream(f"choices is {str(choices)[:80]}, not a list of objects")
    return chunk


def _error_message(error) -> str:
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


async def sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, int]]:
    """The `data` of each server-sent event (multi-line data joined by newlines, comments skipped),
    with how many bytes of the body had been read when it was complete. Read as the bytes come, not
    line by line: one wake-up per read keeps the loop free to take the next stream's bytes."""
    data: list[str] = []
    pending = b""
    offset = 0  # bytes of the body up to the end of `pending`'s last complete line
    async for block in response.content.iter_any():
        *lines, rest = (pending + block).split(b"\n")
        for raw in lines:
            offset += len(raw) + 1
            line = raw.rstrip(b"\r").decode()
            if not line:
                if data:
                    yield "\n".join(data), offset
                    data = []
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        pending = rest
    line = pending.rstrip(b"\r").decode()
    if line.startswith("data:"):
        data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data), offset + len(pending)


class ChunkReader:
    """One stream's chunks into its record: a timed event per chunk that carried tokens (the
    server's running usage count, else logprobs entries, else one), the usage, the text."""

    def __init__(self, record: RequestRecord):
        self.record = record
        self.usage_so_far = 0
        self.text_parts: list[str] = []

    def take(self, data: str, now: float) -> bool:
        """One event's data, read at `now`; False once the stream has ended ([DONE] or an error)."""
        if data.strip() == "[DONE]":
            return False
        chunk = parse_chunk(data)
        if "error" in chunk:
            self.record.error = f"stream error: {_error_message(chunk['error'])}"
            return False
        take_usage(chunk, self.record)
        for choice in chunk.get("choices") or []:
            text = _chunk_text(choice)
            n = self.tokens_in(chunk, choice, text)
            if n > 0:
                self.record.events.append(Event(now, n, text))
            self.text_parts.append(text)
            self.record.finish_reason = choice.get("finish_reason") or self.record.finish_reason
        return True

    def tokens_in(self, chunk: dict, choice: dict, text: str) -> int:
        usage = chunk.get("usage")
        if usage and usage.get("completion_tokens") is not None:
            n = usage["completion_tokens"] - self.usage_so_far
            self.usage_so_far = usage["completion_tokens"]
            self.record.unit_source = "continuous_usage"
            return max(n, 0)
        count = _logprob_count(choice)
        if count is not None:
            self.record.unit_source = "logprobs"
            return count
        return 1 if text else 0


def take_usage(chunk: dict, record: RequestRecord) -> None:
    usage = chunk.get("usage")
    if not usage:
        return
    if usage.get("prompt_tokens") is not None:
        record.input_units = usage["prompt_tokens"]
    if not chunk.get("choices") and usage.get("completion_tokens") is not None:
        # The closing usage-only chunk holds the authoritative total.
        record.reported_units = usage["completion_tokens"]
    details = usage_details(usage)
    for key, value in details.items():  # the latest report wins (running or closing usage)
        if isinstance(value, int) and not isinstance(value, bool):
            record.usage[str(key)] = value


class OpenAIStream(Transport, unit="tokens", unit_source="one_per_chunk"):
    """POST with stream=true; fills the record with a timed event per token-carrying chunk."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    async def exchange(self, client: aiohttp.ClientSession, base_url: str, payload: dict, record: RequestRecord,
                       start: float) -> None:
        body = {**payload, "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        reader = ChunkReader(record)
        try:
            async with client.post(base_url + ENDPOINTS[self.endpoint], json=body) as response:
                if response.status != 200:
                    record.error = error_text(response.status, await response.read())
                    return
                # The watch begins before the first read: a chunk is timed by the socket read that
                # completed it, not by when this loop got round to parsing it.
                with Arrivals(response) as arrivals:
                    async for data, read in sse_data(response):
                        if not reader.take(data, arrivals.at(read) - start):
                            break
        finally:
            record.final = "".join(reader.text_parts)
        record.error = record.error or _over_limit(payload, record)

    def missing(self, record: RequestRecord) -> str | None:
        return None if record.unit_events else "no chunk carried a token"


def _over_limit(payload: dict, record: RequestRecord) -> str | None:
    """A count past the request's max_tokens: the stack's usage (which the counts come from) overstates
    its output, and its throughput with it."""
    limit = payload.get("max_tokens", payload.get("max_completion_tokens"))
    if not isinstance(limit, int):
        return None
    counted = max(sum(e.units for e in record.events), record.reported_units or 0)
    if counted > limit:
        return f"the stack counted {counted:g} tokens for a request of max_tokens {limit}: its usage overstates its output"
    return None
