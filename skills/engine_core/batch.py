"""One forward step's inputs: all scheduled tokens packed into one row list.

Rows are the decodes first (one token per sequence), then each prefill chunk in turn. The
linear layers run on all rows at once; attention runs once for all decodes (a padded batch
over slots 0..S-1) and once per prefill chunk. Everything here is built once per step and
shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrefillSpan:
    """A chunk of one sequence's prompt: rows [row, row + length) at positions [start, start + length)."""

    slot: int
    start: int
    length: int
    row: int
    mask: torch.Tensor | None  # [group * length, end] additive; None: causal from 0 (is_causal)
    keys: int = 0  # keys attended (the mask's width); 0: start + length. Verify chunks read whole key blocks
    # > length: attention pads the chunk's queries to this many rows (the mask has them), so its
    # numerics do not depend on the chunk's length (verify chunks; see skills/speculative_decoding).
    query_rows: int = 0

    @property
    def end(self) -> int:
        return self.keys or self.start + self.length


@dataclass(frozen=True)
class DecodeBatch:
    """The decoding sequences' attention over the dense slot range 0..num_slots-1."""

    num_slots: int
    slots: torch.Tensor  # [decodes] long: each decode row's slot
    dense: bool  # slots == 0..num_slots-1 in order: no scatter/gather of queries needed
    max_len: int  # longest context among the decodes, this step included
    mask: torch.Tensor  # [num_slots, 1, 1, max_len] additive: 0 where a key is attended, -inf elsewhere


@dataclass(frozen=True)
class ForwardBatch:
    input_ids: torch.Tensor  # [rows] long
    positions: torch.Tensor  # [rows] long
    slots: torch.Tensor  # [rows] long: where each row's state is written
    num_decodes: int
    decode: DecodeBatch | None  # None where rows_alone
    prefills: tuple[PrefillSpan, ...]  # empty where rows_alone
    sample_rows: torch.Tensor  # [samples] long: rows whose logits are needed (decodes, last prompt chunks)
    # Every row attends its own slot's keys 0..position, alone (native kernels; prompt chunks too):
    # attention is one Kernels.row_attention call per layer over (slots, positions), which needs
    # no masks or spans, and the layer loop may run in C++.
    rows_alone: bool = False

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])


# Masks are additive in the model dtype: SDPA's CPU kernel would otherwise convert a bool mask
# with two `where`s in every layer.


def _additive(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(keep.shape, dtype=dtype).masked_fill_(~keep, float("-inf"))


def chunk_mask(start: int, length: int, group: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Causal mask of a prefill chunk whose grouped queries are folded into the query axis."""
    if start == 0 and group == 1:
        return None
    keys = torch.arange(start + length)
    rows = keys[None, :] <= (start + torch.arange(length))[:, None]
    return _additive(rows.repeat(group, 1), dtype)


def verify_mask(start: int, length: int, keys: int, group: int, dtype: torch.dtype,
                query_rows: int = 0) -> torch.Tensor:
    """Causal mask of a chunk at [start, start + length) over `keys` >= start + length keys (the
    ones past the chunk masked), plus unmasked rows for the padding queries up to `query_rows`:
    whole key blocks and a fixed query count keep each row's attention numerics independent of
    where the chunk starts and how long it is (see skills/speculative_decoding/NOTE.md)."""
    rows = torch.arange(keys)[None, :] <= (start + torch.arange(length))[:, None]
    mask = _additive(rows.repeat(group, 1), dtype)
    pad = group * (query_rows - length)
    return torch.cat([mask, mask.new_zeros(pad, keys)]) if pad > 0 else mask


def decode_mask(lengths: list[int], max_len: int, dtype: torch.dtype) -> torch.Tensor:
    """lengths: per slot 0..S-1, its context length (at least 1, so no row is fully masked)."""
    lens = torch.tensor(lengths, dtype=torch.long)
    return _additive((torch.arange(max_len)[None, :] < lens[:, None])[:, None, None, :], dtype)
