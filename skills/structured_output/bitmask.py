"""Batched token masks: one bitmask for the whole batch, filled in one call, applied to logits.

The mask is llguidance's layout, [batch, ceil(vocab / 32)] int32, bit `id % 32` of word
`id // 32` set when token `id` is allowed; `vocab` is the *tokenizer's*. Numpy only, so the same
masks serve a torch engine (`torch.from_numpy(allowed_mask(...))`, then `masked_fill`) and an MLX
one (`mx.array(...)`, then `mx.where`). `apply` covers an engine that samples on the CPU.

Why batched: `fill_next_token_bitmask_par` computes all rows in one call on llguidance's own
thread pool, without the GIL, into one contiguous buffer an engine copies to its device at once.
On a machine with cores to spare the rows run in parallel; on 2 shared cores it still saved a
little over row by row (NOTE.md). Rows of finished sequences (EOS only) and of unconstrained ones
(all ones) are written here, without llguidance.

A model may have more logits than the tokenizer has tokens (embeddings padded to a round size, as
in Qwen2.5); `apply` and `allowed_mask` disallow those extra ids. So an unconstrained row (all
ones) still loses them: leave unconstrained sequences' logits unmasked where that could matter.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import llguidance
import llguidance.numpy as llg_np
import numpy as np

from .constraint import Constraint


@dataclass
class MaskStats:
    """Seconds spent filling and applying masks, and rows filled (a row = one sequence's token)."""

    fill_s: float = 0.0
    apply_s: float = 0.0
    rows: int = 0  # constrained rows filled
    calls: int = 0

    @property
    def fill_us_per_token(self) -> float:
        return 1e6 * self.fill_s / self.rows if self.rows else 0.0

    @property
    def mask_us_per_token(self) -> float:
        """Fill plus apply, per constrained token: the metric an engine reports."""
        return 1e6 * (self.fill_s + self.apply_s) / self.rows if self.rows else 0.0


class BatchMasker:
    """Owns the batch bitmask and fills it for a list of constraints (None = unconstrained row).

    `threads`: llguidance's pool for the parallel fill (None: its default, 80% of the CPUs); with
    `parallel=False` rows are filled one by one on the calling thread (the same masks)."""

    def __init__(self, vocab_size: int, max_batch: int = 16, threads: int | None = None,
                 parallel: bool = True) -> None:
        self.vocab_size = vocab_size
        self.bitmask = llg_np.allocate_token_bitmask(max_batch, vocab_size)
        self.parallel = parallel
        self._executor = llguidance.LLExecutor(threads) if parallel else None
        self.stats = MaskStats()

    def fill(self, constraints: Sequence[Constraint | None]) -> np.ndarray:
        """Masks for this step, row i for constraints[i]: a view [len(constraints), words] of the
        masker's buffer, valid until the next fill."""
        started = time.perf_counter()
        n = len(constraints)
        if n > self.bitmask.shape[0]:
            self.bitmask = llg_np.allocate_token_bitmask(max(n, 2 * self.bitmask.shape[0]), self.vocab_size)
        out = self.bitmask[:n]  # leading rows: still C-contiguous
        pending = []
        for i, c in enumerate(constraints):
            if c is None:
                out[i] = -1
            elif c.done() or not self.parallel:
                c.allowed(out[i])
            else:
                pending.append((c.matcher, i))
        if len(pending) == 1:
            matcher, i = pending[0]
            matcher.unsafe_compute_mask_ptr(out[i].ctypes.data, out[i].nbytes)
        elif pending:
            llg_np.fill_next_token_bitmask_par(self._executor, pending, out)
        self.stats.fill_s += time.perf_counter() - started
        self.stats.rows += sum(c is not None for c in constraints)
        self.stats.calls += 1
        return out

    def apply(self, logits: np.ndarray, bitmask: np.ndarray) -> np.ndarray:
        """`apply_bitmask`, timed into the stats."""
        started = time.perf_counter()
        out = apply_bitmask(logits, bitmask)
        self.stats.apply_s += time.perf_counter() - started
        return out


def allowed_mask(bitmask: np.ndarray, vocab: int) -> np.ndarray:
    """Bool [batch, vocab] (or [vocab] for one row): True where the token is allowed. `vocab` is
    the model's logit count; ids past the bitmask's bits come out False."""
    words = np.ascontiguousarray(bitmask, dtype="<i4")  # bytes in bit order on any host
    bits = min(vocab, 32 * words.shape[-1])
    allowed = np.unpackbits(words.view(np.uint8), axis=-1, count=bits, bitorder="little").view(bool)
    if bits < vocab:
        pad = np.zeros((*allowed.shape[:-1], vocab - bits), dtype=bool)
        allowed = np.concatenate([allowed, pad], axis=-1)
    return allowed


def apply_bitmask(logits: np.ndarray, bitmask: np.ndarray) -> np.ndarray:
    """Set disallowed logits to -inf, in place, and return `logits` ([batch, vocab] with a
    [batch, words] mask, or one row with one row). Extra model ids beyond the tokenizer's
    vocabulary are disallowed (their bits are never set). Allowed logits keep their exact bits."""
    if logits.shape[:-1] != bitmask.shape[:-1]:
        raise ValueError(f"logits {logits.shape} and bitmask {bitmask.shape} differ in batch")
    allowed = allowed_mask(bitmask, logits.shape[-1])
    if logits.dtype.kind == "f" and logits.flags["C_CONTIGUOUS"] and logits.flags["WRITEABLE"]:
        _select_branch_free(logits, allowed)
    else:
        np.putmask(logits, ~allowed, -np.inf)
    return logits


def _select_branch_free(logits: np.ndarray, allowed: np.ndarray) -> None:
    """logits = allowed ? logits : -inf, on the float's bits: x ^ n, & keep, ^ n leaves x where keep
    is all ones and n (-inf's bits) where it is zero. Three passes without branches: ~6x faster
    than `np.putmask` on a mask that is a coin flip per token (a JSON string's)."""
    ints = logits.view(np.dtype(f"i{logits.itemsize}"))
    neg = np.array(-np.inf, dtype=logits.dtype).view(ints.dtype)
    keep = np.negative(allowed.view(np.int8)).astype(ints.dtype)  # True -> -1 (all ones), False -> 0
    np.bitwise_xor(ints, neg, out=ints)
    np.bitwise_and(ints, keep, out=ints)
    np.bitwise_xor(ints, neg, out=ints)


def allowed_ids(row: np.ndarray) -> np.ndarray:
    """The token ids one bitmask row allows (for tests and debugging)."""
    return np.flatnonzero(allowed_mask(row, 32 * row.shape[-1]))
