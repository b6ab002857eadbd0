"""The engine's knobs, and the transcript rule's numbers (harness/transcription.py says the rule)."""

from __future__ import annotations

from dataclasses import dataclass

RATE = 16000
TOKENS_PER_SECOND_X2 = 13  # 6.5 new tokens per second of audio (Moonshine's model card)


@dataclass(frozen=True)
class EngineConfig:
    max_streams: int = 8  # streams whose chunks share the encoder's and the decoder's forwards
    threads: int | None = None  # torch intra-op threads on the engine thread; None: torch's default
    encoder_cache: bool = True  # False: every chunk re-encodes its stream's whole buffer (the oracle's other side)
    draft: bool = True  # verify the previous partial's tokens in the restarted decode's first forward
    # A stream's next draft is cut to what its last verify accepted plus this many tokens: a
    # transcript that keeps changing (random weights) wastes few rows, a stable one drafts whole.
    draft_slack: int = 8
    # Decode steps draft up to this many tokens each by lookup over the previous partial and the
    # decode's own output (skills/speculative_decoding's LookupProposer), verified in the step's
    # forward; 0: one token per step. Only while the step stays within `lookup_rows` rows (one per
    # stream + drafts): measured, drafts paid off at 2-4 streams (1.3x) and cost at 8 (0.9x).
    lookup_tokens: int = 2
    lookup_rows: int = 10
    screened_head: bool = True  # greedy_head.py: bf16 screen + fp32 on the candidates; False: the fp32 head

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")


def token_limit(samples: int) -> int:
    """New tokens allowed for a transcript of `samples` usable samples."""
    return samples * TOKENS_PER_SECOND_X2 // (2 * RATE)
