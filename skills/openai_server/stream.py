"""A thread-to-asyncio request stream that engines running in a worker thread can reuse."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .engine_api import GenerationFailed, TokenOutput


@dataclass
class QueueStream:
    """Outputs are pushed from the engine thread with `send`; the event loop iterates them.

    `cancelled` is read by the engine thread to drop the request at its next step.
    """

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def on_running_loop(cls) -> "QueueStream":
        return cls(asyncio.get_running_loop())

    def cancel(self) -> None:
        self.cancelled.set()

    def send(self, item: TokenOutput | GenerationFailed) -> None:
        """Thread-safe: called from the engine thread."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def send_many(self, items: list[TokenOutput]) -> None:
        """Several outputs with a single wake-up of the event loop."""
        self.loop.call_soon_threadsafe(self._put_all, items)

    def _put_all(self, items: list[TokenOutput]) -> None:
        for item in items:
            self.queue.put_nowait(item)

    async def batches(self) -> AsyncIterator[list[TokenOutput]]:
        """The outputs in the groups they arrived in: everything queued when the consumer looks
        (one engine step's tokens, or several steps' if the consumer fell behind)."""
        try:
            while True:
                items = [await self.queue.get()]
                while not self.queue.empty():
                    items.append(self.queue.get_nowait())
                for i, item in enumerate(items):
                    if isinstance(item, GenerationFailed):
                        if i:
                            yield items[:i]
                        raise item
                    if item.finish_reason is not None:
                        yield items[: i + 1]
                        return
                yield items
        finally:
            self.cancel()

    async def __aiter__(self) -> AsyncIterator[TokenOutput]:
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, GenerationFailed):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self.cancel()
