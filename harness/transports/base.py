"""What every transport does around its own exchange with the server: label the record with its
unit, time from the send, and turn whatever a broken or hostile stack makes reading its answer
raise into the request's error, never the cell's."""
from __future__ import annotations

import time

import aiohttp

from harness.client import REQUEST_ERRORS, failure
from harness.records import RequestRecord


class Transport:
    """A protocol's client side. Subclasses name their unit and how an event's units are counted:
    `class AudioStream(Transport, unit="audio_s", unit_source="audio_covered")`."""

    unit: str = "tokens"
    unit_source: str = "one_per_event"

    def __init_subclass__(cls, unit: str = "tokens", unit_source: str = "one_per_event", **kwargs):
        super().__init_subclass__(**kwargs)
        cls.unit, cls.unit_source = unit, unit_source

    async def send(self, client: aiohttp.ClientSession, base_url: str, payload: dict,
                   record: RequestRecord) -> RequestRecord:
        record.unit, record.unit_source = self.unit, self.unit_source
        record.clock = time.perf_counter()
        try:
            await self.exchange(client, base_url, payload, record, record.clock)
        except TimeoutError:  # the session's per-request deadline (aiohttp's read timeouts are ones too)
            when = f"after {len(record.events)} message(s)" if record.events else "before any output"
            record.error = f"timed out {when}: no answer within the request's {client.timeout.total:g} s deadline"
        except REQUEST_ERRORS as exc:
            record.error = failure(exc)
        if record.error is None:
            record.error = self.missing(record)
        return record

    async def exchange(self, client: aiohttp.ClientSession, base_url: str, payload: dict, record: RequestRecord,
                       start: float) -> None:
        """Send one request and fill `record` (event times relative to `start`)."""
        raise NotImplementedError

    def missing(self, record: RequestRecord) -> str | None:
        """What a request that raised nothing still lacks (no output at all), or None."""
        return None if record.unit_events else f"no answer carried any {self.unit}"
