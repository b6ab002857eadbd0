"""Matmul row counts whose rows come out bit-identical, checked on this machine at load.

A prefix-cache hit changes how many rows a step has (a tail instead of a whole prompt; a decode
batch of another size), so a row's product must not depend on its row count. oneDNN's prepacked
fp32 matmul passed that at every count from 1 to 600 here; MKL's sgemm picks its kernel by shape:
on the AMD EPYC (AVX-512) we measured, a row computed among 1, 2, 3, 5-7 or 9-11 rows differs in
its last bits from the same row among 4, 8 or 12 and more (the small counts change with the thread
count). So the check runs the model's own matrices (linear.py) on random rows on the loading
thread (the thread count matters), and every matmul is padded to a row count that agrees with all
others (none where every count agrees).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SMALL = 64  # every row count up to this is checked; larger ones at a spread up to max_rows


@dataclass(frozen=True)
class RowPadding:
    exact_from: int  # every checked row count >= this agrees
    also: tuple[int, ...] = ()  # smaller counts that agree too

    def rows(self, m: int) -> int:
        """The row count to run m rows at."""
        if m >= self.exact_from:
            return m
        return min((a for a in self.also if a >= m), default=self.exact_from)

    def to_json(self) -> dict:
        return {"exact_from": self.exact_from, "also": list(self.also)}


def settle(linears: list, max_rows: int, head=None, head_rows: int = SMALL, seed: int = 0) -> RowPadding:
    """The padding under which each row of `linears` (and of `head`, up to head_rows) has the same
    bits at every row count a step can have (up to max_rows). A linear: `in_features`, and called
    on [rows, in_features]."""
    gen = torch.Generator().manual_seed(seed)
    counts = sorted(set(range(1, SMALL + 1)) | {m for m in (96, 128, 200, 256, 384, 512, 768, 1024) if m <= max_rows}
                    | {max_rows})
    good = set(counts)
    shapes = {(m.out_features, m.in_features): m for m in linears}
    for m in shapes.values():
        good &= _agreeing(m, counts, gen)
    if head is not None:
        good &= _agreeing(head, [m for m in counts if m <= head_rows], gen) | {m for m in counts if m > head_rows}
    exact_from = next((m for m in counts if all(c in good for c in counts if c >= m)), max_rows + 1)
    if exact_from > max_rows:  # nothing agrees: no padding helps, run rows as they come
        return RowPadding(1)
    return RowPadding(exact_from, tuple(m for m in counts if m < exact_from and m in good))


def _agreeing(linear, counts: list[int], gen: torch.Generator) -> set[int]:
    """Row counts m whose rows equal the same rows inside the largest count's product (at two offsets)."""
    top = max(counts)
    x = torch.randn(top + 3, linear.in_features, generator=gen)
    ref = linear(x)
    return {m for m in counts
            if torch.equal(linear(x[:m].clone()), ref[:m]) and torch.equal(linear(x[3:3 + m].clone()), ref[3:3 + m])}
