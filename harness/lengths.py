"""Whether a stack produced the output length asked for (`max_tokens` with `ignore_eos`), counts inferred included.

Most stacks count their own tokens (usage, or one logprob entry per token). Where a stream carries
neither, the harness counts one token per chunk, and a server that holds back the bytes of a
character split over several tokens (llama-cpp-python does) sends those tokens in one chunk: the
count comes out short of what the stack generated. Such a short count is accepted only where the
stack itself said it reached the limit (`finish_reason: length`, every request) and the chunks that
carried a multi-byte character could hide the difference.
"""
from __future__ import annotations

from harness.records import RequestRecord

INFERRED = "one_per_chunk"


def count_slack(record: RequestRecord) -> int:
    """The most tokens a one-per-chunk count of this record can have missed: a chunk with a non-ASCII
    character may hold as many tokens as its bytes, less the one it was counted as."""
    if record.unit_count_source != INFERRED:
        return 0
    return sum(len(text.encode()) - 1 for e in record.unit_events
               if isinstance(text := e.data, str) and not text.isascii())


def length_metrics(done: list[RequestRecord]) -> dict[str, int]:
    """Over the completed requests of a cell."""
    return {"finished_at_length": sum(r.finish_reason == "length" for r in done),
            "count_slack_max": sum(count_slack(r) for r in done)}


def length_honoured(metrics: dict, expected: int) -> bool:
    """Every completed request produced its max_tokens: `expected` output tokens in all, counted by the
    stack, or counted one per chunk short by no more than its multi-byte chunks allow, every request
    having stopped at the limit by the stack's own account."""
    total = metrics.get("total_output_tokens")
    if total == expected:
        return True
    return (metrics.get("token_count_source") == INFERRED and isinstance(total, (int, float))
            and metrics.get("finished_at_length") == metrics.get("completed")
            and expected - metrics.get("count_slack_max", 0) <= total < expected)
