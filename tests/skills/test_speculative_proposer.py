"""The drafter's lookup (`LookupProposer` behind `Drafter`): pure Python over token ids, no model.

Each case is one of setting B's drafting failures, in small: the opening code fence, an edit
whose token occurs nowhere, the model looping on its own lines, K = 16 really drafting 16."""

from __future__ import annotations

from skills.speculative_decoding import Draft, Drafter, SpecConfig, accept_greedy
from skills.speculative_decoding.proposer import LookupProposer

# Token ids standing for text.
USER, ASSIST, END, NL, FENCE, PY, THE, FIX = 900, 901, 902, 903, 904, 905, 906, 907
CODE = [10, 11, 12, NL, 13, 14, 15, NL, 16, 17, 18, NL, 19, 20, 21, NL]
PROMPT = [USER, NL, FENCE, PY, NL, *CODE, FENCE, NL, NL, THE, FIX, END, NL, ASSIST, NL]


def drive(drafter: Drafter, output: list[int], upto: int, limit: int = 64) -> list[Draft]:
    """Runs the engine's loop against a known greedy output: the first token from the prefill, then
    propose / accept / update until `upto` tokens; returns the drafts."""
    done, drafts = output[:1], []
    while len(done) < upto:
        draft = drafter.propose(done, limit)
        drafts.append(draft)
        future = output[len(done):]
        accepted = accept_greedy(draft.tokens, future + [-1] * (len(draft.tokens) + 1))
        emitted = min(accepted + 1, upto - len(done))
        done = done + future[:emitted]
        drafter.update(done, draft, accepted, emitted)
    return drafts


def test_opening_fence_leads_into_the_code_not_the_closing_fence() -> None:
    d = Drafter(SpecConfig(num_speculative_tokens=6), PROMPT, CODE)
    draft = d.propose([FENCE], 6)
    # Both fences follow a newline (a 2-token match each); the one before the prediction wins.
    assert draft.tokens == [PY, NL, *CODE[:4]] and draft.source == "ngram"
    # After "```python\n" the output walks the prediction.
    draft = d.propose([FENCE, PY, NL], 6)
    assert draft.tokens == CODE[:6] and draft.source == "prediction"


def test_closing_fence_after_the_code_drafts_the_prompt_text_after_it() -> None:
    d = Drafter(SpecConfig(num_speculative_tokens=4), PROMPT, CODE)
    output = [FENCE, PY, NL, *CODE]
    drive(d, output + [FENCE], len(output))
    # At the prediction's end the copy runs on into what follows it in the prompt.
    assert d.propose(output, 4).tokens == [FENCE, NL, NL, THE]


def test_substituted_token_found_nowhere_resyncs_after_it() -> None:
    new = 555  # the model's edit: a token that occurs nowhere
    output = [FENCE, PY, NL, *CODE[:5], new, *CODE[6:]]
    d = Drafter(SpecConfig(num_speculative_tokens=8), PROMPT, CODE)
    drafts = drive(d, output, len(output))
    after_edit = drafts[[i for i, dr in enumerate(drafts) if CODE[5] in dr.tokens][0] + 1]
    # Nothing matches "555"; the copy left at CODE[5] goes on at CODE[6] (one token: unsure).
    assert after_edit.tokens == [CODE[6]] and after_edit.source == "prediction"
    # Longer fallback drafts when asked for.
    d = Drafter(SpecConfig(num_speculative_tokens=8, fallback_tokens=3), PROMPT, CODE)
    drafts = drive(d, output, len(output))
    assert [CODE[6], CODE[7], CODE[8]] in [dr.tokens for dr in drafts]


def test_model_looping_on_its_own_lines_drafts_the_loop() -> None:
    # The output follows the first two lines, then repeats them instead of going on.
    loop = [FENCE, PY, NL, *CODE[:8]]
    output = loop + CODE[:8] * 3
    d = Drafter(SpecConfig(num_speculative_tokens=4), PROMPT, CODE)
    drive(d, output, len(loop) + 16)  # twice through the loop: the prediction and the history tie
    # Three times through: the output's own history matches longer than the prediction's place.
    draft = d.propose(output[:len(loop) + 16], 4)
    assert draft.tokens == CODE[:4] and draft.source == "ngram"


def test_loop_shorter_than_the_draft_is_copied_over_itself() -> None:
    p = LookupProposer([1, 2, 3], None)
    # "7 8" repeated: the latest earlier "8" is two back; the copy reads through its own draft.
    assert p.propose([7, 8, 7, 8], 5) == [7, 8, 7, 8, 7]


def test_k_16_drafts_16_without_adaptive_and_adaptive_starts_at_initial() -> None:
    long_code = list(range(100, 140))
    prompt = [USER, NL, *long_code, END, ASSIST, NL]
    d = Drafter(SpecConfig(num_speculative_tokens=16), prompt, long_code)
    assert d.propose([100, 101], 64).tokens == long_code[2:18]
    assert len(d.propose([100, 101], 10).tokens) == 10  # the engine's limit still cuts it
    d = Drafter(SpecConfig(num_speculative_tokens=16, adaptive=True, initial_tokens=8), prompt, long_code)
    assert len(d.propose([100, 101], 64).tokens) == 8


def test_short_matches_draft_at_most_their_unsure_cap() -> None:
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    d = Drafter(SpecConfig(num_speculative_tokens=8, unsure_tokens=(3,)), prompt, None)
    assert d.propose([50, 4], 8).tokens == [5, 6, 7]  # "4" matched alone
    d = Drafter(SpecConfig(num_speculative_tokens=8, unsure_tokens=(3,)), prompt, None)
    assert d.propose([3, 4], 8).tokens == [5, 6, 7, 8, 9, 3, 4, 5]  # "3 4": the whole K (prompt, then output)
    d = Drafter(SpecConfig(num_speculative_tokens=8, unsure_tokens=(2, 4)), prompt, None)
    assert d.propose([50, 4], 8).tokens == [5, 6]  # one token matched
    d = Drafter(SpecConfig(num_speculative_tokens=8, unsure_tokens=(2, 4)), prompt, None)
    assert d.propose([3, 4], 8).tokens == [5, 6, 7, 8]  # two
    d = Drafter(SpecConfig(num_speculative_tokens=8, unsure_tokens=(2, 4)), prompt, None)
    assert len(d.propose([2, 3, 4], 8).tokens) == 8  # three: past the caps
    d = Drafter(SpecConfig(num_speculative_tokens=8, unsure_tokens=(0,)), prompt, None)
    assert len(d.propose([50, 4], 8).tokens) == 8


def test_prediction_outside_the_prompt_and_usage_counts() -> None:
    prompt = [100, 101, 102, 103]
    pred = [1, 2, 3, 4, 5]
    d = Drafter(SpecConfig(num_speculative_tokens=8), prompt, pred)
    draft = d.propose([9, 1, 2], 8)
    assert draft.tokens == [3, 4, 5] and draft.source == "prediction"  # stops at the prediction's end
    d.update([9, 1, 2, 3, 7], draft, accepted=1, emitted=2)
    assert (d.accepted_prediction, d.rejected_prediction) == (1, 2)
    d = Drafter(SpecConfig(num_speculative_tokens=8), prompt, pred)  # (a drafter per request: its output only grows)
    assert d.propose([101, 102], 8) == Draft([103, 101, 102] * 2 + [103, 101], "ngram")
    # Prediction off: the prompt and output only, and no usage reported.
    d = Drafter(SpecConfig(num_speculative_tokens=8, use_prediction=False), prompt, pred)
    assert d.prediction is None and d.propose([9, 1, 2], 8).tokens == []
    # Prompt lookup off: the prediction only.
    d = Drafter(SpecConfig(num_speculative_tokens=8, ngram=False), prompt, pred)
    assert d.propose([101, 102], 8).tokens == []
    d = Drafter(SpecConfig(num_speculative_tokens=8, ngram=False), prompt, pred)
    assert d.propose([1, 2], 8).tokens == [3, 4, 5]


def test_update_for_another_step_is_ignored() -> None:
    d = Drafter(SpecConfig(num_speculative_tokens=4), PROMPT, CODE)
    draft = d.propose([FENCE, PY, NL], 4)
    d.update([FENCE, PY, NL, 1, 2, 3, 4, 5], draft, accepted=0, emitted=1)  # not the proposed step: no crash
    assert d.propose([FENCE, PY, NL, 10, 11], 4).tokens == CODE[2:6]
