"""One WebSocket audio stream from connect to close: its chunks fed to the engine one after another,
one partial per chunk in chunk order, then the final or an error, for this stream only.

Two tasks share the socket: a reader turns frames into events on a queue as they arrive, and an
answerer takes them in order and awaits the engine. Reading on while the engine works is what lets
a vanished client cancel its in-flight chunk at once, and lets a frame that arrives after finalize
(before the final is out) turn the final into an error.
"""
from __future__ import annotations

import asyncio
import logging

from fastapi import WebSocket

from .engine_api import StreamingTranscriber
from .metrics import ServerStats
from .protocol import CLOSE_DONE, CLOSE_ENGINE, CLOSE_PROTOCOL, Chunk, Event, Finalize, error, final, partial, read_frame

log = logging.getLogger(__name__)


class EngineFailed(Exception):
    """The engine raised while serving this stream."""


class StreamSession:
    def __init__(self, ws: WebSocket, engine: StreamingTranscriber, stats: ServerStats, stream: str) -> None:
        self.ws = ws
        self.engine = engine
        self.stats = stats
        self.stream = stream
        self.inbox: asyncio.Queue[Event] = asyncio.Queue()
        self.chunks = 0
        self.samples = 0

    async def run(self) -> None:
        """Serve the stream until its final or error is out or its client is gone; the engine forgets it then."""
        self.engine.open(self.stream)
        self.stats.opened()
        reader = asyncio.create_task(self._read())
        answerer = asyncio.create_task(self._answer())
        try:
            await asyncio.wait({reader, answerer}, return_when=asyncio.FIRST_COMPLETED)
            if not answerer.done():
                log.info("%s: the client went away after %d chunks", self.stream, self.chunks)
        finally:
            for task in (reader, answerer):
                task.cancel()
            await asyncio.gather(reader, answerer, return_exceptions=True)
            if answerer.done() and not answerer.cancelled() and answerer.exception() is not None:
                log.info("%s ended: %r", self.stream, answerer.exception())  # a send to a client already gone
            self.engine.close(self.stream)
            self.stats.closed()

    async def _read(self) -> None:
        finalized = False
        while True:
            event = read_frame(await self.ws.receive(), finalized)
            if event is None:
                return
            self.inbox.put_nowait(event)
            finalized = finalized or isinstance(event, Finalize)

    async def _answer(self) -> None:
        try:
            while True:
                event = await self.inbox.get()
                if isinstance(event, Chunk):
                    await self._partial(event)
                elif isinstance(event, Finalize):
                    await self._final()
                    return
                else:
                    await self._fail(event.message, CLOSE_PROTOCOL)
                    return
        except EngineFailed as exc:
            await self._fail(str(exc), CLOSE_ENGINE)

    async def _partial(self, chunk: Chunk) -> None:
        index = self.chunks
        self.chunks += 1
        self.samples += len(chunk.samples)
        self.stats.chunks += 1
        text = await self._engine(self.engine.feed(self.stream, chunk.samples))
        await self.ws.send_json(partial(index, self.samples, text))

    async def _final(self) -> None:
        text = await self._engine(self.engine.finalize(self.stream))
        if not self.inbox.empty():  # only faults follow a finalize: one came before the final went out
            await self._fail(self.inbox.get_nowait().message, CLOSE_PROTOCOL)
            return
        await self.ws.send_json(final(text, self.samples))
        await self.ws.close(CLOSE_DONE)

    async def _fail(self, message: str, code: int) -> None:
        log.info("%s: error after %d chunks: %s", self.stream, self.chunks, message)
        await self.ws.send_json(error(message))
        await self.ws.close(code)

    async def _engine(self, call) -> str:
        try:
            return await call
        except Exception as exc:  # the engine's own failure, reported to this stream only
            log.exception("%s: the engine failed", self.stream)
            raise EngineFailed(f"the engine failed: {type(exc).__name__}: {exc}") from exc
