"""Scheduler invariants: token budget, slot limit, chunking, contiguous slots."""

from __future__ import annotations

import pytest

from skills.engine_core.scheduler import Move, Scheduler, SchedulerConfig
from skills.engine_core.sequence import Sequence, Status
from skills.engine_api import SamplingParams

PARAMS = SamplingParams(max_tokens=4, temperature=0.0)


def seq(n_prompt: int) -> Sequence:
    return Sequence(list(range(3, 3 + n_prompt)), PARAMS)


def advance(step) -> None:
    """What the engine does after a forward: state computed, a token appended where one was sampled."""
    for s in step.decodes:
        s.num_computed += 1
        s.output_ids.append(7)
    for s, n in step.prefills:
        s.num_computed += n
        if not s.prefilling:
            s.output_ids.append(7)


def test_budget_and_slot_limit() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=3, max_num_batched_tokens=10, max_model_len=64))
    seqs = [seq(4) for _ in range(5)]
    for s in seqs:
        sched.add(s)
    step = sched.schedule()
    assert step.num_tokens <= 10
    assert [n for _, n in step.prefills] == [4, 4, 2]  # the third prompt is chunked
    assert sched.num_running == 3 and len(sched.waiting) == 2
    advance(step)
    step = sched.schedule()
    assert step.decodes == seqs[:2] and step.prefills == [(seqs[2], 2)]
    assert step.num_tokens == 4  # no new admission: the slots are full
    for _ in range(20):
        assert step.num_tokens <= 10 and step.num_slots <= 3
        advance(step)
        for s in list(sched.slots):
            if len(s.output_ids) >= PARAMS.max_tokens:
                sched.finish(s, "length")
        step = sched.schedule()
        if step is None:
            break
    assert not sched.has_work() and all(s.status is Status.FINISHED for s in seqs)


def test_long_prompt_is_prefilled_in_chunks_alongside_decodes() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=8, max_model_len=64))
    short, long = seq(2), seq(20)
    sched.add(short)
    advance(sched.schedule())
    sched.add(long)
    chunks = []
    while long.prefilling:
        step = sched.schedule()
        assert step.decodes == [short] and step.num_tokens <= 8
        chunks.append(step.prefills[0][1])
        advance(step)
    assert chunks == [7, 7, 6] and len(long.output_ids) == 1


def test_finish_keeps_slots_contiguous() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64))
    seqs = [seq(3) for _ in range(4)]
    for s in seqs:
        sched.add(s)
    advance(sched.schedule())
    assert [s.slot for s in seqs] == [0, 1, 2, 3]
    moves = sched.finish(seqs[1], "stop")
    assert moves == [Move(3, 1, seqs[3].num_computed)]
    assert seqs[3].slot == 1 and seqs[1].slot is None
    assert sched.finish(seqs[2], "stop") == []  # the last slot: nothing to move
    assert [s.slot for s in sched.slots] == [0, 1]
    step = sched.schedule()
    assert step.num_slots == 2 and [s.slot for s in step.decodes] == [0, 1]


def test_waiting_request_can_be_finished() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=8, max_model_len=64))
    a, b = seq(2), seq(2)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    assert sched.finish(b, "abort") == [] and not sched.waiting


def test_rejects_requests_longer_than_the_context() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=8, max_model_len=8))
    with pytest.raises(ValueError):
        sched.add(seq(6))


def test_budget_must_cover_one_decode_per_slot() -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=4)
