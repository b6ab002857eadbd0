"""Draft proposers: where the next K tokens are guessed from, without a draft model.

- `LookupProposer` (what `Drafter` uses): one lookup over everything the request has, the
  prompt, the prediction (OpenAI's `prediction`; found inside the prompt when the prompt quotes
  it, else kept beside it) and the output so far. Every earlier place where the output's last
  token occurs is a candidate; candidates are ranked by how many of the output's last tokens
  they match, ties by where they are (continuing the copy the output is following, then just
  ahead of the prediction cursor, then the output's own history, latest first, then the rest of
  the prompt, nearest the cursor first). The draft is what followed the winner.
  (It replaced a pair, a cursor walking the prediction and vLLM-style prompt lookup of the
  last 2-4 tokens, which drafted 3.4 tokens per forward on setting B's traces to its 3.7.)

All pure Python over token ids; a position index (token -> where it occurs) keeps a lookup to
the few places holding the last token, so proposing costs microseconds next to a forward.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

SEP = -1  # between the prediction and the prompt when the prompt does not quote the prediction: matches nothing


class LookupProposer:
    """One request's drafts from its prompt, prediction and output (see the module docstring).

    The lookup context is `static + output`, static being the prompt (the prediction is a slice
    of it when the prompt quotes it, as bug-fix prompts do), or `prediction + [SEP] + prompt`
    when it does not. A candidate is a position `end` in the context whose preceding tokens
    equal the output's last `n` tokens (n >= 1, compared up to `max_match`); the draft is
    `context[end:]`, read through the output's own end (an overlapping copy: the model looping
    on its last few tokens drafts the loop). Ranking, best first:

    1. longer match `n`;
    2. at equal n, by place: (a) `follow`, where the copy the output took last step continues
       (the prediction cursor while it walks the prediction); (b) a static place at most `near`
       tokens ahead of the prediction cursor (the output skipped a token or two of it); (c) the
       output's own history, latest first (the model repeats its own lines more often than it
       jumps to a far part of the prompt); (d) any other static place, nearest the cursor
       (ahead before behind at equal distance; behind matters at the start, where the opening
       code fence before the prediction beats the closing one after it).

    When nothing matches (the last token occurs nowhere: an edit tokenized differently) but the
    last step left a copy at `div` (the model's own token replaced the copied one), the draft is
    the copy after it (`div + 1`, a substituted token), at most `fallback_tokens` long.

    `unsure_tokens[n - 1]` caps the draft when the winner matched n tokens only and is not the
    copy being followed (0 or past the tuple: no cap). A one-token match is a weak guess (measured
    acceptance: ~30% for the first token, ~5% by the fifth); how far a weak guess is worth
    drafting depends on what a verify row costs (speculator.AUTO_UNSURE).
    """

    def __init__(self, prompt: Sequence[int], prediction: Sequence[int] | None, *, use_prompt: bool = True,
                 max_match: int = 16, min_match: int = 1, near: int = 2, unsure_tokens: Sequence[int] = (),
                 fallback_tokens: int = 1) -> None:
        pred = list(prediction or [])
        prompt = list(prompt) if use_prompt else []
        start = _find(prompt, pred) if pred else None
        if start is not None or not pred:
            static = prompt
        else:
            static = pred + [SEP] + prompt  # SEP: a copy of the prediction ends with it
            start = 0
        self.region = (start, start + len(pred)) if pred else (0, 0)  # the prediction inside static
        self.static_len = len(static)
        self.index_output = use_prompt  # the output is a source only with prompt lookup on
        self.max_match, self.min_match, self.near = max(1, max_match), max(1, min_match), near
        self.unsure_tokens, self.fallback_tokens = tuple(unsure_tokens), fallback_tokens
        self.ctx: list[int] = []
        self.where: dict[int, list[int]] = defaultdict(list)
        for t in static:
            self.where[t].append(len(self.ctx))
            self.ctx.append(t)
        self.cursor = self.region[0]  # static index of the prediction token expected next
        self.follow = self.cursor  # context index where the last copy continues
        self.div: int | None = None  # context index where the output left the last copy (None: it did not)
        self._last: tuple[int, int] | None = None  # (end, len(output)) of the last draft

    def _sync(self, output: Sequence[int]) -> None:
        """Append the output tokens not yet in the context (the output only grows)."""
        ctx, where, index = self.ctx, self.where, self.index_output
        for t in output[len(ctx) - self.static_len:]:
            if index:
                where[t].append(len(ctx))
            ctx.append(t)

    def propose(self, output: Sequence[int], k: int) -> list[int]:
        return self.propose_scored(output, k)[0]

    def propose_scored(self, output: Sequence[int], k: int) -> tuple[list[int], int, bool]:
        """(draft, n, from_prediction): n the matched suffix length (0 for the fallback)."""
        self._last = None
        if k <= 0 or not output:
            return [], 0, False
        self._sync(output)
        ctx = self.ctx
        size = len(ctx)
        end, n = self._best(size)
        if end is None:
            div = self.div
            if div is None or div + 1 >= size or ctx[div + 1] == SEP or self.fallback_tokens <= 0:
                return [], 0, False
            end, k = div + 1, min(k, self.fallback_tokens)
        elif n <= len(self.unsure_tokens) and end != self.follow and self.unsure_tokens[n - 1] > 0:
            k = min(k, self.unsure_tokens[n - 1])
        draft: list[int] = []
        for i in range(end, end + k):
            t = ctx[i] if i < size else draft[i - size]  # past the output's end: copy the draft itself
            if t == SEP:
                break
            draft.append(t)
        self._last = (end, len(output))
        return draft, n, self.region[0] <= end < self.region[1]

    def _best(self, size: int) -> tuple[int | None, int]:
        """(end, n) of the best-ranked candidate for the suffix of ctx[:size] (None: no candidate)."""
        ctx = self.ctx
        limit = min(self.max_match, size)
        static_len, cursor, follow, near = self.static_len, self.cursor, self.follow, self.near
        best_key: tuple | None = None
        best_end = None
        best_n = 0
        for pos in self.where.get(ctx[size - 1], ()):
            end = pos + 1
            if end >= size:
                continue  # the last token itself
            n = 1
            while n < limit and end - n - 1 >= 0 and ctx[end - n - 1] == ctx[size - n - 1]:
                n += 1
            if n < self.min_match or n < best_n:
                continue
            if end == follow or end == cursor:
                key = (-n, 0, 0)
            elif end >= static_len:
                key = (-n, 2, -end)  # own output: latest first
            else:
                ahead = end - cursor
                if 0 < ahead <= near:
                    key = (-n, 1, ahead)
                else:
                    key = (-n, 3, ahead if ahead > 0 else -ahead)
            if best_key is None or key < best_key:
                best_key, best_end, best_n = key, end, n
        return best_end, best_n

    def update(self, output: Sequence[int], emitted: int) -> None:
        """After a verify step: the last `emitted` tokens of output are new. Moves `follow` (and the
        prediction cursor, for a static copy) over those that continued the drafted copy."""
        last, self._last = self._last, None
        self.div = None
        if last is None:
            return
        end, seen = last
        start = len(output) - emitted
        if start != seen:
            return  # not the step this draft was made for
        ctx, static_len = self.ctx, self.static_len
        # A static copy ends with static; a copy of the output reads on into the new tokens.
        stop = static_len if end < static_len else static_len + len(output)
        i = 0
        while i < emitted and end + i < stop and output[start + i] == (
                ctx[end + i] if end + i < len(ctx) else output[end + i - static_len]):
            i += 1
        self.follow = end + i
        if end < self.static_len:
            self.cursor = end + i
        if i < emitted:
            self.div = end + i


def _find(hay: Sequence[int], needle: Sequence[int]) -> int | None:
    """The first index where needle occurs in hay as a contiguous run (None: nowhere)."""
    n = len(needle)
    if not n:
        return None
    first = needle[0]
    for i in range(len(hay) - n + 1):
        if hay[i] == first and hay[i:i + n] == needle:
            return i
    return None
