"""Continuous batching with chunked prefill under a row budget per step.

Each step: every decoding sequence gets one row; then prompt chunks (sequences already prefilling
first, then waiting ones FCFS while a slot is free) until the budget is spent. Admission asks the
prefix-cache glue (`admit`), which restores what the cache holds into the slot and says where the
prefill starts, or defers the request (a running prefill will soon hold more of its prompt).
Chunks may end anywhere: the forward is split invariant (kernels.cpp), so chunking never changes
a number.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from skills.engine_core.sequence import Status

from .sequence import HybridSequence

# admit(seq, running) -> True when admitted (seq.num_computed set, state in seq.slot), False to wait
Admit = Callable[[HybridSequence, list[HybridSequence]], bool]


@dataclass(frozen=True)
class Chunk:
    seq: HybridSequence
    start: int
    length: int


@dataclass(frozen=True)
class ScheduledStep:
    decodes: list[HybridSequence]
    prefills: list[Chunk]

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(c.length for c in self.prefills)


class Scheduler:
    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int, admit: Admit) -> None:
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.admit = admit
        self.waiting: deque[HybridSequence] = deque()
        self.running: list[HybridSequence] = []
        self._free = list(range(max_num_seqs - 1, -1, -1))  # pop() gives the lowest slot
        self.changed = False  # the running set changed since the caller last looked

    def add(self, seq: HybridSequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledStep | None:
        budget = self.budget
        decodes = [s for s in self.running if not s.prefilling]
        budget -= len(decodes)
        prefills: list[Chunk] = []
        for seq in self.running:
            if seq.prefilling and budget > 0:
                n = min(seq.remaining_prompt, budget)
                prefills.append(Chunk(seq, seq.num_computed, n))
                budget -= n
        for seq in list(self.waiting):
            if budget <= 0 or not self._free:
                break
            seq.slot = self._free.pop()
            if not self.admit(seq, self.running):
                self._free.append(seq.slot)
                seq.slot = None
                continue
            self.waiting.remove(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            self.changed = True
            n = min(seq.remaining_prompt, budget)
            prefills.append(Chunk(seq, seq.num_computed, n))
            budget -= n
        if not decodes and not prefills:
            return None
        return ScheduledStep(decodes, prefills)

    def finish(self, seq: HybridSequence, reason: str) -> None:
        seq.status, seq.finish_reason = Status.FINISHED, reason
        if seq.slot is None:
            if seq in self.waiting:
                self.waiting.remove(seq)
            return
        self.running.remove(seq)
        self.changed = True
        self._free.append(seq.slot)
        self._free.sort(reverse=True)
        seq.slot = None
