"""One forward's rows: every decode's one row, then each prompt chunk's rows, padded to an allowed
row count (rows.py). Each sequence's rows are one segment (the GatedDeltaNet kernel steps a
segment's rows in order from the slot's state); save rows are where a snapshot is taken."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rows import RowPadding
from .scheduler import ScheduledStep
from .sequence import HybridSequence
from .sharing import shared_keys


@dataclass(frozen=True)
class StepBatch:
    ids: torch.Tensor  # [padded rows]; padding rows have slot -1
    positions: torch.Tensor
    slots: torch.Tensor
    share_slot: torch.Tensor  # per row: a slot holding the same keys [0, share_len) (-1: none)
    share_len: torch.Tensor
    seg_slot: torch.Tensor  # [segments]
    seg_start: torch.Tensor
    seg_len: torch.Tensor
    save_rows: torch.Tensor  # [saves]: the state after this row is a snapshot
    sample_rows: torch.Tensor  # rows whose logits are sampled
    rows: int  # real rows


@dataclass(frozen=True)
class BatchPlan:
    batch: StepBatch
    sampled: list[HybridSequence]  # in sample_rows order
    saves: list[tuple[HybridSequence, int]]  # (sequence, position) per save row: state after tokens[:position]


def build(step: ScheduledStep, padding: RowPadding, share: bool = False) -> BatchPlan:
    """share: decode rows read a shared prompt prefix from their source's slot (sharing.py)."""
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    segments: list[tuple[int, int, int]] = []
    save_rows: list[int] = []
    saves: list[tuple[HybridSequence, int]] = []
    sample_rows: list[int] = []
    sampled: list[HybridSequence] = []
    share_slot: list[int] = []
    share_len: list[int] = []
    for seq in step.decodes:
        src, n = shared_keys(seq) if share else (-1, 0)
        share_slot.append(src)
        share_len.append(n)
        segments.append((seq.slot, len(ids), 1))
        sample_rows.append(len(ids))
        sampled.append(seq)
        ids.append(seq.last_token)
        positions.append(seq.num_tokens - 1)
        slots.append(seq.slot)
    for chunk in step.prefills:
        seq, start, n = chunk.seq, chunk.start, chunk.length
        row = len(ids)
        segments.append((seq.slot, row, n))
        ids += seq.prompt_ids[start:start + n]
        positions += range(start, start + n)
        slots += [seq.slot] * n
        for p in seq.save_points:
            if start < p <= start + n:
                save_rows.append(row + p - start - 1)
                saves.append((seq, p))
        if start + n == len(seq.prompt_ids):
            sample_rows.append(row + n - 1)
            sampled.append(seq)
    real = len(ids)
    share_slot += [-1] * (real - len(share_slot))
    share_len += [0] * (real - len(share_len))
    pad = padding.rows(real) - real
    share_slot += [-1] * pad
    share_len += [0] * pad
    ids += [0] * pad
    positions += [0] * pad
    slots += [-1] * pad
    seg = torch.tensor(segments, dtype=torch.long).reshape(-1, 3).t().contiguous()
    batch = StepBatch(
        ids=torch.tensor(ids, dtype=torch.long), positions=torch.tensor(positions, dtype=torch.long),
        slots=torch.tensor(slots, dtype=torch.long), share_slot=torch.tensor(share_slot, dtype=torch.long),
        share_len=torch.tensor(share_len, dtype=torch.long), seg_slot=seg[0], seg_start=seg[1], seg_len=seg[2],
        save_rows=torch.tensor(save_rows, dtype=torch.long), sample_rows=torch.tensor(sample_rows, dtype=torch.long),
        rows=real)
    return BatchPlan(batch, sampled, saves)
