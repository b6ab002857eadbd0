"""One sequence's grammar state: which tokens may come next, and the tokens it has taken.

Masks are llguidance's bitmask rows: int32 words, bit `id % 32` of word `id // 32` set when token
`id` is allowed (`bitmask.py` turns rows into logits). The matcher is a copy of the cache's
template (`CompiledGrammar.new_matcher`), so starting a sequence compiles nothing.

EOS. llguidance allows the tokenizer's EOS ids wherever the JSON may end (built with the model's
ids: `grammar.tokenizer_from_hf(..., eos_ids)`); once the JSON is complete (the matcher is
*stopped*: a closing `}` leaves nothing to add) its mask is EOS only. The row written here is then
exactly the model's `eos_id` and nothing else, whatever the tokenizer lists, so masked argmax
ends the sequence on the id the engine stops on.
"""

from __future__ import annotations

import numpy as np

from .grammar import CompiledGrammar


class ConstraintError(RuntimeError):
    """A token the grammar does not allow was fed in (a bug in the caller: masked decoding
    only picks allowed ones), or the grammar hit one of llguidance's limits."""


class Constraint:
    """A sequence constrained by a compiled grammar (not thread-safe; one per sequence)."""

    def __init__(self, compiled: CompiledGrammar, eos_id: int) -> None:
        if eos_id not in compiled.eos_ids:
            raise ValueError(f"eos_id {eos_id} is not an EOS id of the grammar's tokenizer {compiled.eos_ids}: "
                             "build it with the model's (tokenizer_from_hf(..., eos_ids))")
        self.compiled = compiled
        self.matcher = compiled.new_matcher()
        self.eos_id = eos_id
        self.tokens = 0  # taken, EOS included
        self.ended = False  # an EOS id was taken
        self._scratch: np.ndarray | None = None

    @property
    def mask_words(self) -> int:
        return (self.compiled.vocab_size + 31) // 32

    def done(self) -> bool:
        """The grammar is complete: nothing but EOS may follow (or EOS was taken)."""
        return self.ended or self.matcher.is_stopped()

    def allowed(self, row: np.ndarray) -> None:
        """Write the allowed next tokens into `row` (one bitmask row: int32, C-contiguous,
        `mask_words` long, e.g. `bitmask[i]`)."""
        if row.dtype != np.int32 or row.ndim != 1 or not row.flags["C_CONTIGUOUS"] or row.size != self.mask_words:
            raise ValueError(f"a mask row is a contiguous int32 vector of {self.mask_words} words")
        if self.done():
            write_only(row, self.eos_id)
        else:
            self.matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)

    def advance(self, token_id: int) -> None:
        """Take the token the model chose; raises ConstraintError if the grammar rejects it."""
        token_id = int(token_id)
        if self.ended:
            raise ConstraintError(f"token {token_id} after the end of the sequence")
        if not self.matcher.consume_token(token_id):
            error = self.matcher.get_error().strip().splitlines()
            raise ConstraintError(f"token {token_id} rejected by the grammar" + (f": {error[0]}" if error else ""))
        self.tokens += 1
        self.ended = token_id in self.compiled.eos_ids

    def forced(self, verify: bool = True) -> list[int]:
        """The tokens the grammar forces next, in order ([] when none); the state is unchanged.

        llguidance's `compute_ff_tokens` tokenizes the forced *bytes* canonically. Greedy masked
        decoding emits them only if, at each of those steps, the mask allows that token alone
        (then argmax has no choice). `verify` checks exactly that on a copy of the matcher and
        cuts the list at the first token that is not the lone allowed one, so jump-forward is
        lossless by construction, not by llguidance's tokenization agreeing with the mask (it
        did on every forced token measured: NOTE.md). Costs one mask per forced token, the mask
        plain decoding would have computed at that step. After the JSON is complete the only
        forced token is EOS."""
        if self.done():
            return [] if self.ended or self.matcher.is_error() else [self.eos_id]
        ff = list(self.matcher.compute_ff_tokens())
        if not verify or not ff:
            return ff
        probe = self.matcher.deep_copy()
        row = self._scratch_row()
        for i, token in enumerate(ff):
            probe.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)
            if not is_only(row, token) or not probe.consume_token(token):
                return ff[:i]
        return ff

    def _scratch_row(self) -> np.ndarray:
        if self._scratch is None:
            self._scratch = np.zeros(self.mask_words, dtype=np.int32)
        return self._scratch


def write_only(row: np.ndarray, token_id: int) -> None:
    """Set `row` to allow `token_id` alone."""
    row.fill(0)
    row.view(np.uint32)[token_id >> 5] = np.uint32(1 << (token_id & 31))


def is_only(row: np.ndarray, token_id: int) -> bool:
    """Whether `row` allows `token_id` and nothing else."""
    word = token_id >> 5
    return (0 <= word < row.size and int(row.view(np.uint32)[word]) == 1 << (token_id & 31)
            and np.count_nonzero(row) == 1)
