"""Draft proposers: where the next K tokens are guessed from, without a draft model.

- `PredictionProposer`: the request's predicted output (OpenAI's `prediction`), tokenized with
  the model's tokenizer. A cursor follows the output along the prediction; when the output
  leaves it (the edit), the longest suffix of the output is looked up in the prediction again,
  preferring the place nearest after the cursor, so the cursor walks along the text.
- `NgramProposer`: prompt lookup (vLLM's `ngram` method, llama.cpp's lookup decoding): the
  latest earlier occurrence of the context's last n tokens (n from `max_n` down to `min_n`)
  in prompt + output, and the tokens that followed it.

Both are pure Python over token ids; a position index (token -> where it occurs) keeps a
lookup to a few candidates, so proposing costs microseconds next to a forward.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

FOLLOWING = 1 << 30  # match length reported while the output follows the prediction's cursor


def _index(tokens: Sequence[int]) -> dict[int, list[int]]:
    where: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(tokens):
        where[t].append(i)
    return where


def _suffix_len(hay: Sequence[int], end: int, needle: Sequence[int], limit: int) -> int:
    """How many of needle's last tokens equal hay[..end) (hay[end - 1] == needle[-1] is known), at most limit."""
    n = 1
    while n < limit and end - n - 1 >= 0 and hay[end - n - 1] == needle[-n - 1]:
        n += 1
    return n


class PredictionProposer:
    """Walks along a tokenized prediction. `propose(output, k)` after every accepted step."""

    def __init__(self, prediction: Sequence[int], max_match: int = 8, min_match: int = 1) -> None:
        self.pred = list(prediction)
        self.where = _index(self.pred)
        self.max_match = max_match
        self.min_match = min_match
        self.cursor = 0  # index in pred of the token expected next (just after the last match)
        self._synced_at = -1  # len(output) when the cursor was last known to follow the output

    def propose(self, output: Sequence[int], k: int) -> list[int]:
        return self.propose_scored(output, k)[0]

    def propose_scored(self, output: Sequence[int], k: int) -> tuple[list[int], int]:
        """(draft, match length): the match length is how many of the output's last tokens agree
        with the prediction before the draft (`FOLLOWING` while the output follows the cursor)."""
        if k <= 0 or not self.pred or not output:
            return [], 0
        if self._follows(output):
            match = FOLLOWING
        else:
            end, match = self._resync(output)
            if end is None:
                self._synced_at = -1
                return [], 0
            self.cursor = end
        self._synced_at = len(output)
        return self.pred[self.cursor: self.cursor + k], match

    def advance(self, output: Sequence[int], emitted: int) -> None:
        """The last `emitted` tokens of output are new: move the cursor over those that follow the prediction."""
        if self._synced_at < 0 or self._synced_at != len(output) - emitted:
            return
        start = len(output) - emitted
        n = 0
        while n < emitted and self.cursor + n < len(self.pred) and output[start + n] == self.pred[self.cursor + n]:
            n += 1
        if n == emitted:
            self.cursor += n
            self._synced_at = len(output)
        else:
            self._synced_at = -1  # the output left the prediction: look it up again next time

    def _follows(self, output: Sequence[int]) -> bool:
        return self._synced_at == len(output) and 0 < self.cursor < len(self.pred)

    def _resync(self, output: Sequence[int]) -> tuple[int | None, int]:
        """(end index in pred, length) of the longest match of output's suffix; ties: nearest at/after the cursor."""
        best_len, best_end = 0, None
        limit = min(self.max_match, len(output))
        for pos in self.where.get(output[-1], ()):
            end = pos + 1
            if end >= len(self.pred):
                continue  # nothing would follow it
            n = _suffix_len(self.pred, end, output, limit)
            if n > best_len or (n == best_len and best_end is not None and self._nearer(end, best_end)):
                best_len, best_end = n, end
        return (best_end, best_len) if best_len >= self.min_match else (None, 0)

    def _nearer(self, end: int, other: int) -> bool:
        ahead, other_ahead = end >= self.cursor, other >= self.cursor
        if ahead != other_ahead:
            return ahead
        return abs(end - self.cursor) < abs(other - self.cursor)


class NgramProposer:
    """Prompt lookup over prompt + output (the context grows through `extend`)."""

    def __init__(self, prompt: Sequence[int], max_n: int = 4, min_n: int = 2) -> None:
        self.context: list[int] = []
        self.where: dict[int, list[int]] = defaultdict(list)
        self.max_n, self.min_n = max_n, min_n
        self.extend(prompt)

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.where[t].append(len(self.context))
            self.context.append(t)

    def propose(self, k: int) -> list[int]:
        return self.propose_scored(k)[0]

    def propose_scored(self, k: int) -> tuple[list[int], int]:
        """(draft, n): n the length of the matched suffix."""
        ctx = self.context
        if k <= 0 or len(ctx) < self.min_n + 1:
            return [], 0
        limit = min(self.max_n, len(ctx) - 1)
        best_len, best_end = 0, None
        for pos in reversed(self.where.get(ctx[-1], ())):  # latest first: recent repeats predict best
            end = pos + 1
            if end >= len(ctx):
                continue  # the last token itself
            n = _suffix_len(ctx, end, ctx, limit)
            if n > best_len:
                best_len, best_end = n, end
                if n == limit:
                    break
        if best_end is None or best_len < self.min_n:
            return [], 0
        return ctx[best_end: best_end + k], best_len
