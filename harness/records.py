"""What the client observed for one request: the raw material every metric is computed from.

One shape for every protocol (a transport fills it): the send time, the timed events that carried
output (each with the units it carried: tokens, audio seconds, images, as the scenario names
them), the final output, the counts the server reported, and an error with its reason.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Event:
    """Something the server sent back: when (seconds after the send), how many units of output it
    carried (0 for a message that carried none, such as a closing transcript that adds nothing),
    and what it carried (a text delta, a partial transcript)."""

    t: float
    units: float
    data: Any = None


@dataclass
class RequestRecord:
    """One request as seen by the client.

    Times are seconds. `sent_at` is relative to the start of the load point; event and input times
    are relative to `sent_at`. `reported_units` is the server's own count of the output (usage's
    completion_tokens), which, where given, is the total metrics use; `usage` holds the other counts
    it reported, by name (e.g. OpenAI's accepted_prediction_tokens), summed per cell.
    """

    index: int
    unit: str = "tokens"
    sent_at: float | None = None  # None: never sent
    events: list[Event] = field(default_factory=list)
    inputs: list[float] = field(default_factory=list)  # when each part of a streamed input went out
    final: Any = None  # the whole output: text, a transcript, a summary of an image
    input_units: int | None = None  # the prompt's size as the server counted it (prompt_tokens)
    reported_units: float | None = None
    unit_source: str = "one_per_event"  # how units per event were counted (continuous_usage, logprobs, ...)
    usage: dict[str, int] = field(default_factory=dict)
    finish_reason: str | None = None
    error: str | None = None
    warmup: bool = False
    client_queue_time: float = 0.0  # time waiting for a concurrency slot, not counted in e2el
    clock: float | None = None  # the host's monotonic clock (perf_counter) when it went out; events are after it
    blob: bytes | None = field(default=None, repr=False)  # binary output (an image), kept in memory only

    @property
    def unit_events(self) -> list[Event]:
        return [e for e in self.events if e.units > 0]

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.unit_events)

    @property
    def ttft(self) -> float | None:
        """Send -> the first event that carried output."""
        carrying = self.unit_events
        return carrying[0].t if carrying else None

    @property
    def e2el(self) -> float | None:
        """Send -> the last event (a closing message that carried no units still ends the request)."""
        return self.events[-1].t if self.unit_events else None

    @property
    def output_units(self) -> float:
        """The server's count when it gave one, else the units counted event by event."""
        if self.reported_units is not None:
            return self.reported_units
        return sum(e.units for e in self.events)

    @property
    def unit_count_source(self) -> str:
        return "usage" if self.reported_units is not None else self.unit_source

    @property
    def text(self) -> str:
        return self.final if isinstance(self.final, str) else ""

    def to_json(self) -> dict:
        data = asdict(self)
        blob = data.pop("blob")
        if blob is not None:
            data["blob"] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "RequestRecord":
        fields = {k: v for k, v in data.items() if k != "blob"}
        fields["events"] = [Event(**e) for e in fields.get("events") or []]
        return cls(**fields)


def write_records(path: Path, records: list[RequestRecord]) -> None:
    """One JSON object per line, written atomically."""
    from harness.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r.to_json()) + "\n" for r in records))


def read_records(path: Path) -> list[RequestRecord]:
    return [RequestRecord.from_json(json.loads(line)) for line in path.read_text().splitlines() if line]
