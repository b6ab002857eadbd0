"""The engine's /metrics counters (written by the engine thread, read by the event loop), and
the periodic step log."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("skills.engine_core.engine")


@dataclass
class Counters:
    forward_passes: int = 0
    requests_total: int = 0
    requests_finished: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    prefill_tokens_total: int = 0  # prompt tokens run through the model (chunked prefill)
    decode_tokens_total: int = 0
    batch_tokens_max: int = 0  # most tokens in one forward
    batch_seqs_total: int = 0  # sum over forwards of sequences in the batch (mean = / forward_passes)
    batch_seqs_max: int = 0
    prefix_cache_hit_tokens: int = 0  # no prefix cache in engine_core itself
    # Speculative decoding: verify chunks run (one per sequence per step), draft tokens in them,
    # draft tokens accepted (emitted as output), and of those, the ones drafted from a prediction.
    spec_steps: int = 0
    spec_proposed_tokens: int = 0
    spec_accepted_tokens: int = 0
    spec_prediction_accepted_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def record_step(self, decodes: int, prefills: int, prefill_tokens: int, verify_tokens: int = 0) -> None:
        """decodes: sequences decoding this step (verify chunks included); verify_tokens: their draft rows."""
        with self._lock:
            self.forward_passes += 1
            self.decode_tokens_total += decodes + verify_tokens
            self.prefill_tokens_total += prefill_tokens
            self.batch_seqs_total += decodes + prefills
            self.batch_seqs_max = max(self.batch_seqs_max, decodes + prefills)
            self.batch_tokens_max = max(self.batch_tokens_max, decodes + verify_tokens + prefill_tokens)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class StepLogger:
    """Logs steps/s, mean step time and batch every `every_s` seconds while busy (as vLLM's stat logger)."""

    def __init__(self, counters: dict[str, int], every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.since = time.perf_counter()
        self.busy = 0.0
        self.first = counters

    def add(self, elapsed: float, counters: dict[str, int]) -> None:
        self.busy += elapsed
        now = time.perf_counter()
        if now - self.since < self.every_s:
            return
        d = {k: counters[k] - self.first[k] for k in ("forward_passes", "batch_seqs_total", "decode_tokens_total",
                                                      "prefill_tokens_total")}
        steps = max(d["forward_passes"], 1)
        log.info("%.1f steps/s, %.1f ms/step, %.1f seqs/step; decode %.1f tok/s, prefill %.1f tok/s; busy %.0f%%",
                 steps / (now - self.since), 1e3 * self.busy / steps, d["batch_seqs_total"] / steps,
                 d["decode_tokens_total"] / (now - self.since), d["prefill_tokens_total"] / (now - self.since),
                 100 * self.busy / (now - self.since))
        self.since, self.busy, self.first = now, 0.0, counters
