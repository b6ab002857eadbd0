"""When a streamed answer's bytes came off its socket.

A batched engine writes every stream's chunk of a step at once. One event loop then reads them in
turn: each chunk's bytes are taken off the socket by a short callback, but the reading coroutine
that parses them runs later, after every other stream's callback and every earlier stream's parse
(~50-70 us each). Stamping a chunk when its parser reached it put that queue into the stack's
latency: at 32 streams the last chunk of a step read 2-5 ms late. The time taken here is the
socket read's, in the connection's `data_received`, so the harness's own parsing is never counted.

A chunk's time is that of the read that completed it; bytes already buffered when the watch began
(headers and body in one read) get the time it began, which is no earlier than they arrived.
"""
from __future__ import annotations

import time
from collections import deque

import aiohttp


class Arrivals:
    """Socket read times of one response body, by how many of its bytes had been read then."""

    def __init__(self, response: aiohttp.ClientResponse):
        self._reader = response.content
        self._marks: deque[tuple[int, float]] = deque([(self._reader.total_bytes, time.perf_counter())])
        connection = response.connection
        self._protocol = connection.protocol if connection is not None else None
        if self._protocol is not None:
            # The class's own method, not an instance's: a connection reused while an earlier
            # response's watch is still closing must not be read through that watch.
            received = type(self._protocol).data_received.__get__(self._protocol)

            def data_received(data: bytes) -> None:
                if not data:  # aiohttp re-enters with b"" to resume its parser; nothing arrived
                    return received(data)
                now = time.perf_counter()
                received(data)
                self._marks.append((self._reader.total_bytes, now))

            self._hook = data_received
            self._protocol.data_received = data_received

    def at(self, offset: int) -> float:
        """perf_counter time by which the body's first `offset` bytes had been read off the socket."""
        while self._marks and self._marks[0][0] < offset:
            self._marks.popleft()
        return self._marks[0][1] if self._marks else time.perf_counter()

    def close(self) -> None:
        """Stop watching: the connection goes back to the pool with its own `data_received` (unless
        a later response on it has begun a watch of its own)."""
        if self._protocol is not None and self._protocol.__dict__.get("data_received") is self._hook:
            del self._protocol.data_received
        self._protocol = None

    def __enter__(self) -> Arrivals:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
