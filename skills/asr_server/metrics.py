"""The server's own stream counters and the Prometheus text of `GET /metrics`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerStats:
    """Updated on the event loop only."""

    streams_opened: int = 0
    chunks: int = 0  # chunks fed to the engine
    streams_active: int = 0

    def opened(self) -> None:
        self.streams_opened += 1
        self.streams_active += 1

    def closed(self) -> None:
        self.streams_active -= 1


def prometheus(engine_counters: dict[str, float], stats: ServerStats) -> str:
    """Each engine counter as `asr_<name>_total`, then the server's counters and its gauge."""
    counters = {f"asr_{name.removesuffix('_total')}_total": value for name, value in engine_counters.items()}
    counters |= {"asr_streams_opened_total": stats.streams_opened, "asr_chunks_total": stats.chunks}
    lines = []
    for name, value in counters.items():
        lines += [f"# TYPE {name} counter", f"{name} {_number(value)}"]
    lines += ["# TYPE asr_streams_active gauge", f"asr_streams_active {stats.streams_active}"]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)
