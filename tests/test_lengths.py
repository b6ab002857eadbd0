"""The output-length check (harness/lengths.py): a stack counted one token per chunk passes when its
chunks carried split characters whole, and fails when it stopped early or came up short otherwise."""
from __future__ import annotations

import pytest

from harness.lengths import count_slack, length_honoured
from harness.metrics import summarize
from harness.records import Event, RequestRecord

MAX_TOKENS = 6


def record(i: int, chunks: list[str], finish: str = "length", reported: int | None = None) -> RequestRecord:
    events = [Event(0.01 * (k + 1), 1, text) for k, text in enumerate(chunks)]
    return RequestRecord(index=i, sent_at=0.0, events=events, final="".join(chunks), finish_reason=finish,
                         unit_source="one_per_chunk", reported_units=reported)


def honoured(records: list[RequestRecord]) -> bool:
    return length_honoured(summarize(records), MAX_TOKENS * len(records))


def test_exact_counts_pass():
    assert honoured([record(0, list("abcdef")), record(1, list("uvwxyz"))])


def test_a_character_split_over_tokens_and_sent_whole_passes():
    # " ÷" came as two byte tokens the server held back and sent in one chunk: 5 chunks for 6 tokens
    merged = record(1, ["a", "b", " ÷", "c", "d"])
    assert count_slack(merged) == 2
    assert honoured([record(0, list("abcdef")), merged])


@pytest.mark.parametrize("records, why", [
    ([record(0, list("abcdef")), record(1, list("abc"), finish="stop")], "stopped at end-of-sequence"),
    ([record(0, list("abcdef")), record(1, list("abc"))], "short with nothing multi-byte to explain it"),
    ([record(0, list("abcdef")), record(1, ["a", "÷", "b"])], "shorter than its multi-byte chunks allow"),
    ([record(0, list("abcdef")), record(1, ["a", "b", " ÷", "c", "d"], finish="stop")], "a split character, but "
                                                                                        "it did not reach the limit"),
    ([record(0, list("abcdef")), record(1, list("abcdefg"))], "one token too many"),
])
def test_a_stack_short_of_its_max_tokens_fails(records, why):
    assert not honoured(records), why


def test_a_stack_s_own_count_is_taken_as_it_is():
    # the server's usage says 5: no slack for a count the stack gave itself
    assert not honoured([record(0, list("abcdef")), record(1, ["a", "b", " ÷", "c", "d"], reported=5)])
    assert honoured([record(0, list("abcdef")), record(1, ["a", "b", " ÷", "c", "d"], reported=6)])
