"""When a streamed answer's bytes came off the wire.

A batched engine writes every stream's chunk of a step at once. One event loop then reads them in
turn: each chunk's bytes are taken off the socket by a short callback, but the reading coroutine
that parses them runs later, after every other stream's callback and every earlier stream's parse
(~50-70 us each). Stamping a chunk when its parser reached it put that queue into the stack's
latency: at 32 streams the last chunk of a step read 2-5 ms late. Stamping it at the socket read
(the connection's `data_received`) left the loop's own turn: bytes that arrive while the loop
parses earlier streams wait in the kernel until the loop selects again (p99 1-2 ms at 32 streams).

So the time taken is the kernel's: the socket asks for receive timestamps (SO_TIMESTAMPNS) and is
read with `recvmsg`, whose timestamp is when the last of the bytes it returned arrived. That wall
clock time becomes a `perf_counter` time through the age of the bytes at the read (the two clocks
read back to back), so only a wall clock stepped while the bytes waited can move it, and then no
later than the read and no earlier than the stream's previous arrival. Where the socket offers no
timestamps (TLS, another event loop, a platform without them), the read's own time is taken.

A chunk's time is when the bytes that completed it arrived; bytes already buffered when the watch
began (headers and body in one read) get the time it began, which is no earlier than they arrived.
`Arrivals` keeps these times by body offset (an HTTP stream), `MessageArrivals` by message (a
WebSocket, whose reads aiohttp parses into messages at once).
"""
from __future__ import annotations

import socket
import struct
import sys
import time
from collections import deque

import aiohttp

# Python names no SO_TIMESTAMPNS; 35 is Linux's (asm-generic), answered with a struct timespec.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None)
_TIMESPEC = struct.Struct("@ll")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


class StampedSocket:
    """A transport's socket, read with `recvmsg` so each read knows when its bytes arrived."""

    def __init__(self, sock: socket.socket):
        self.raw = sock
        self.arrived: float | None = None  # perf_counter time the last read's bytes came in

    def recv(self, size: int) -> bytes:
        data, ancillary, _, _ = self.raw.recvmsg(size, _ANCILLARY)
        # Wall clock first: the age comes out short by the gap between the reads, never long, so an
        # arrival is never put before it happened.
        wall, read_at = time.time_ns(), time.perf_counter()
        self.arrived = read_at
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack_from(payload)
                age = (wall - (seconds * 1_000_000_000 + nanoseconds)) / 1e9
                self.arrived = read_at - max(age, 0.0)
        return data

    def recv_into(self, buffer, size: int = 0) -> int:
        data = self.recv(size or len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def take_arrival(self) -> float | None:
        arrived, self.arrived = self.arrived, None
        return arrived

    def __getattr__(self, name):
        return getattr(self.raw, name)


def _stamp(transport) -> StampedSocket | None:
    """Have `transport` read its socket through a StampedSocket; None where it cannot."""
    sock = getattr(transport, "_sock", None)
    if isinstance(sock, StampedSocket):  # an earlier watch on this kept-alive connection still closing
        sock = sock.raw
    if SO_TIMESTAMPNS is None or not _ANCILLARY or not isinstance(sock, socket.socket):
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return None
    stamped = StampedSocket(sock)
    transport._sock = stamped
    return stamped


class _Watch:
    """A connection's reads, each handed to `_on_read` with the time its bytes arrived, until `close`."""

    def __init__(self, protocol):
        self._protocol = protocol
        self._transport = protocol.transport if protocol is not None else None
        self._socket = _stamp(self._transport) if self._transport is not None else None
        if self._protocol is None:
            return
        # The class's own method, not an instance's: a connection reused while an earlier
        # response's watch is still closing must not be read through that watch.
        received = type(self._protocol).data_received.__get__(self._protocol)
        stamped = self._socket

        def data_received(data: bytes) -> None:
            if not data:  # aiohttp re-enters with b"" to resume its parser; nothing arrived
                return received(data)
            arrived = stamped.take_arrival() if stamped is not None else None
            self._on_read(time.perf_counter() if arrived is None else arrived, received, data)  # no stamp: the read's

        self._hook = data_received
        self._protocol.data_received = data_received

    def _on_read(self, arrived: float, received, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop watching: the connection goes back to the pool with its own `data_received` and
        socket (unless a later response on it has begun a watch of its own)."""
        if self._protocol is not None and self._protocol.__dict__.get("data_received") is self._hook:
            del self._protocol.data_received
        if self._socket is not None and getattr(self._transport, "_sock", None) is self._socket:
            self._transport._sock = self._socket.raw
            try:
                self._socket.raw.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
            except OSError:
                pass  # closed meanwhile
        self._protocol = self._transport = self._socket = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Arrivals(_Watch):
    """Arrival times of one response body, by how many of its bytes had been read then."""

    def __init__(self, response: aiohttp.ClientResponse):
        self._reader = response.content
        self._marks: deque[tuple[int, float]] = deque([(self._reader.total_bytes, time.perf_counter())])
        self._latest = self._marks[0][1]
        connection = response.connection
        super().__init__(connection.protocol if connection is not None else None)

    def _on_read(self, arrived: float, received, data: bytes) -> None:
        received(data)
        # Never before an earlier mark: bytes that sat in the kernel from before the watch began
        # are timed at its start, as bytes buffered in the reader are.
        self._latest = max(arrived, self._latest)
        self._marks.append((self._reader.total_bytes, self._latest))

    def at(self, offset: int) -> float:
        """perf_counter time by which the body's first `offset` bytes had arrived."""
        while self._marks and self._marks[0][0] < offset:
            self._marks.popleft()
        return self._marks[0][1] if self._marks else time.perf_counter()


class MessageArrivals(_Watch):
    """Arrival times of a WebSocket's messages, kept by message: a read's bytes are parsed into
    aiohttp's message queue at once, so each message it queued gets that read's time. A message
    queued otherwise (one parsed before the watch began, or when aiohttp resumes a parse it paused
    for a full queue) is timed when it is taken, as every message was before."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self._queued = getattr(getattr(ws, "_reader", None), "_buffer", None)  # (message, size) pairs
        self._times: dict[int, tuple[object, float]] = {}  # id(message) -> (message, arrival)
        self._latest = time.perf_counter()
        connection = getattr(ws, "_conn", None)
        super().__init__(connection.protocol if connection is not None and self._queued is not None else None)

    def _on_read(self, arrived: float, received, data: bytes) -> None:
        before = len(self._queued)
        received(data)
        self._latest = max(arrived, self._latest)
        for index in range(before, len(self._queued)):
            message = self._queued[index][0]
            self._times[id(message)] = (message, self._latest)  # the message is held: its id stays its own
        while len(self._times) > 4096:  # pings and pongs are taken inside aiohttp, never by `at`
            del self._times[next(iter(self._times))]

    def at(self, message) -> float:
        """perf_counter time at which `message` (as `receive` returned it) arrived."""
        held, arrived = self._times.pop(id(message), (None, None))
        return arrived if held is message else time.perf_counter()
