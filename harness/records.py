"""What the client observed for one request: the raw material every metric is computed from."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class RequestRecord:
    """One request as seen by the client.

    Times are seconds. `sent_at` is relative to the start of the load point; every time in
    `chunk_times` is relative to `sent_at`. Only chunks that carried at least one generated
    token are kept (a role-only or usage-only chunk is not a token chunk).
    """

    index: int
    sent_at: float | None = None  # None: never sent
    prompt_tokens: int | None = None
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    chunk_token_source: str = "one_per_chunk"  # continuous_usage | logprobs | one_per_chunk
    output_text: str = ""
    completion_tokens: int | None = None  # from the server's usage, when it sent one
    finish_reason: str | None = None
    error: str | None = None
    warmup: bool = False
    client_queue_time: float = 0.0  # time waiting for a concurrency slot, not counted in e2el
    # usage.completion_tokens_details, the counts the server reported (e.g. OpenAI's
    # accepted_prediction_tokens); the latest report wins
    usage_details: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunk_times)

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    @property
    def e2el(self) -> float | None:
        return self.chunk_times[-1] if self.chunk_times else None

    @property
    def output_tokens(self) -> int:
        """Server usage when present, else the tokens counted chunk by chunk."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return sum(self.chunk_tokens)

    @property
    def token_count_source(self) -> str:
        return "usage" if self.completion_tokens is not None else self.chunk_token_source

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "RequestRecord":
        return cls(**data)


def write_records(path: Path, records: list[RequestRecord]) -> None:
    """One JSON object per line, written atomically."""
    from harness.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r.to_json()) + "\n" for r in records))


def read_records(path: Path) -> list[RequestRecord]:
    return [RequestRecord.from_json(json.loads(line)) for line in path.read_text().splitlines() if line]
