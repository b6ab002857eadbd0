"""The engine's monotonic counters for /metrics (written by the engine thread, read by the event loop)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class AsrCounters:
    chunks: int = 0  # requests answered (feeds and finalizes), with or without a decode
    decodes: int = 0  # requests whose transcript was decoded (the rest repeated the last one, or were empty)
    encoder_batches: int = 0  # encoder passes (all admitted streams' new audio in one)
    encoder_frames_computed: int = 0  # encoder output frames computed (new, or recomputed at the lookahead tail)
    encoder_frames_reused: int = 0  # output frames kept from an earlier chunk instead of computed again
    cross_kv_frames_computed: int = 0  # frames whose cross-attention K/V were projected
    draft_tokens_proposed: int = 0  # the previous partial's tokens verified in a restarted decode's first forward
    draft_tokens_accepted: int = 0
    lookup_tokens_proposed: int = 0  # drafted in decode steps by lookup (over the previous partial and the output)
    lookup_tokens_accepted: int = 0
    verify_forwards: int = 0  # forwards that restarted decodes (one for all streams joining at once)
    decode_steps: int = 0  # decode forwards (one for all streams decoding at once; 1 + lookup drafts rows each)
    decode_rows: int = 0  # stream-steps in them (mean batch = decode_rows / decode_steps)
    tokens_generated: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}
