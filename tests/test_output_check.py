"""Measured outputs judged by their text against the reference, and the reference cache guarded."""
from __future__ import annotations

import json

import pytest

import harness.reference as reference
from harness.generation import Generation, Prompt
from harness.oracle import compare_text

EOS = "<|im_end|>"
SILENT = frozenset({EOS, "<|im_start|>"})


def ref(tokens: list[str], stop: bool = False, eos_runner_up: tuple[int, ...] = ()) -> Generation:
    top = [{t: -0.1, " maybe": -0.2, " no": -6.0} | ({EOS: -0.3} if i in eos_runner_up else {})
           for i, t in enumerate(tokens)]
    text = "".join(t for t in tokens if t not in SILENT)
    return Generation(tokens=tokens, top=top + ([{EOS: -0.1, " more": -0.2}] if stop else []),
                      finish_reason="stop" if stop else "length", text=text)


TOKENS = [" the", " cat", " sat", EOS, " and", " ran"]  # past EOS: a load point's ignore_eos


@pytest.mark.parametrize("text, usage, ok, says", [
    (" the cat sat and ran", 6, True, ""),                       # the reference, its EOS unprinted
    (" the cat sat<|im_end|> and ran", 6, True, ""),             # or printed
    (" the cat maybe went", 6, True, "near-tie at token 2"),     # a runner-up at the divergence
    (" the dog sat and ran", 6, False, "text differs at token 1"),
    (" the cat sat and", 6, False, "text differs at token 5"),    # stopped short of max_tokens
    (" the cat sat and ran fast", 7, False, "text differs at token 6"),  # past max_tokens
    (" the cat sat and ran", 9, False, "usage says 9 tokens"),   # more tokens claimed than sent
    ("", 6, False, "text differs at token 0"),
])
def test_text_against_the_reference(text, usage, ok, says):
    verdict = compare_text("p", ref(TOKENS), text, SILENT, {EOS}, usage, may_end=False)
    assert verdict.ok == ok and says in verdict.reason, verdict


@pytest.mark.parametrize("text, says", [
    ("the cat sat and ran", "without its opening space for 6 of 6 tokens"),  # all of it, less the space
    ("the cat sat or ran", "without its opening space for 4 of 6 tokens"),   # then another word (EOS unprinted)
    ("the dog sat and ran", None),                                           # one word alike is no sign
    ("cat sat and ran", None),                                               # a word dropped, not a space
])
def test_a_text_without_the_references_opening_space_fails_and_says_so(text, says):
    """Seen on mlx-lm (setting C): its byte-level streaming detokenizer trims the first token's
    leading space, so a completion's text is the reference's less one space: still a failure (the
    completion no longer continues its prompt), but the reason names the trim, not the model."""
    verdict = compare_text("p", ref(TOKENS), text, SILENT, {EOS}, 6, may_end=False)
    assert not verdict.ok and verdict.diverged_at == 0, verdict
    assert (says in verdict.reason) if says else "opening space" not in verdict.reason, verdict.reason


def test_a_longer_runner_up_that_begins_like_the_reference_is_a_near_tie_at_its_own_token():
    """Seen on engine-a: the reference wrote ' condition' then ' of', the stack ' conditions' (the
    reference's runner-up, 0.1 nats behind); the texts part at ' of', but the choice was a token before."""
    tokens = [" It", " is", " the", " condition", " of", " the"]
    top = [{t: -0.1} for t in tokens]
    top[3] = {" condition": -2.54, " conditions": -2.63, " climate": -2.8}
    gen = Generation(tokens=tokens, top=top, finish_reason="length", text="".join(tokens))
    verdict = compare_text("p", gen, " It is the conditions that", SILENT, {EOS}, 6, may_end=False)
    assert verdict.ok and verdict.diverged_at == 3 and "longer runner-up" in verdict.reason, verdict
    # a longer token that is no runner-up there is still a divergence
    assert not compare_text("p", gen, " It is the conditional one", SILENT, {EOS}, 6, may_end=False).ok
    top[3] = {" condition": -2.54, " climate": -2.8}
    assert not compare_text("p", gen, " It is the conditions that", SILENT, {EOS}, 6, may_end=False).ok


def test_a_shorter_runner_up_whose_text_the_stack_spells_is_a_near_tie_at_its_own_token():
    """Seen on engine-a (setting A, AMX Xeon): the reference wrote "\\n\\n" (-0.91) then "1", the stack
    "\\n" (-0.95, its runner-up) then "\\n" and "-"; the texts agree through both newlines and part a
    token later, where "-" is nowhere in the reference's top-5 (its context had "\\n\\n")."""
    tokens = [" Here", "'s", " how", ":", "\n\n", "1", ".", " Open"]
    top = [{t: -0.1} for t in tokens]
    top[4] = {"\n\n": -0.91, "\n": -0.95, " ": -2.33}
    top[5] = {"1": -0.17, "2": -3.35, "8": -3.43}
    gen = Generation(tokens=tokens, top=top, finish_reason="length", text="".join(tokens))
    verdict = compare_text("p", gen, " Here's how:\n\n- 10 days", SILENT, {EOS}, 8, may_end=False)
    assert verdict.ok and verdict.diverged_at == 4 and "shorter cut" in verdict.reason, verdict
    # a token with no shorter runner-up before the divergence leaves it a divergence
    top[4] = {"\n\n": -0.91, " ": -2.33}
    verdict = compare_text("p", gen, " Here's how:\n\n- 10 days", SILENT, {EOS}, 8, may_end=False)
    assert not verdict.ok and verdict.diverged_at == 5, verdict
    # nor does one three tokens back: the stack's cut must be where the texts part, or just before
    top[4] = {"\n\n": -0.1}
    top[2] = {"\n\n": -0.5, "\n": -0.6}
    gen = Generation(tokens=[" Here", "'s", "\n\n", ":", "\n\n", "1", ".", " Open"], top=top, finish_reason="length",
                     text=" Here's\n\n:\n\n1. Open")
    verdict = compare_text("p", gen, " Here's\n\n:\n\n- 10 days", SILENT, {EOS}, 8, may_end=False)
    assert not verdict.ok and verdict.diverged_at == 5, verdict


def test_a_shorter_cut_of_a_token_that_is_not_whitespace_is_no_near_tie():
    """Under a JSON grammar ' "' often has ' ' as its runner-up: taking that cut as a near-tie let a
    valid answer to another request pass as this one's (tests/test_json_schema_oracle.py)."""
    tokens = ['{"', "name", '":', ' "', "Alice", '"}']
    top = [{t: -0.1} for t in tokens]
    top[3] = {' "': -0.2, " ": -0.3}
    gen = Generation(tokens=tokens, top=top, finish_reason="length", text="".join(tokens))
    verdict = compare_text("p", gen, '{"name": "Bob"}', SILENT, {EOS}, 6, may_end=False)
    assert not verdict.ok and verdict.diverged_at == 4, verdict


def test_an_unprinted_special_token_where_the_reference_had_it_as_runner_up_is_a_near_tie():
    # The stack took end-of-sequence at token 1 (printed or not), then went on its own way.
    tied = ref(TOKENS, eos_runner_up=(1,))
    assert compare_text("p", tied, " the<|im_end|> dog", SILENT, {EOS}, 6, may_end=False).ok
    assert compare_text("p", tied, " the dog", SILENT, {EOS}, 6, may_end=False).ok
    assert not compare_text("p", ref(TOKENS), " the dog", SILENT, {EOS}, 6, may_end=False).ok


def test_an_unprinted_special_token_as_the_last_of_a_full_count_is_a_near_tie():
    # Seen on hf-reference (A, ignore_eos): after " bag" the reference chose "\n" (-0.72) with
    # <|im_end|> (-0.89) as its runner-up at the last of 48 tokens; the stack took <|im_end|>,
    # which printed nothing, and counted 48 tokens.
    tokens = [" a", " b", " c", "\n"]
    tied = ref(tokens, eos_runner_up=(3,))
    assert compare_text("p", tied, " a b c", SILENT, {EOS}, 4, may_end=False).ok
    # It fails where the reference had no special runner-up there, where the stack counted fewer
    # tokens (it ended), or where the silent token is not the last one.
    assert not compare_text("p", ref(tokens), " a b c", SILENT, {EOS}, 4, may_end=False).ok
    assert not compare_text("p", tied, " a b c", SILENT, {EOS}, 3, may_end=False).ok
    early = ref([" a", " b", " c", "\n"], eos_runner_up=(2,))
    assert not compare_text("p", early, " a b", SILENT, {EOS}, 4, may_end=False).ok


def test_a_count_off_by_the_near_tied_cuts_of_the_same_text_passes_and_no_more():
    # Seen on hf-reference under a JSON grammar: the reference cut '": "' as one token where its
    # runner-up was '"' (the same text in two tokens); the stack took that and counted one more.
    tokens = ['{"', "a", '":', '"x', '"}']
    top = [{t: -0.1, " no": -6.0} for t in tokens]
    top[2]['"'] = -0.2
    cut = Generation(tokens=tokens, top=top, finish_reason="length", text="".join(tokens))
    assert compare_text("p", cut, cut.text, SILENT, {EOS}, 6, may_end=False).ok
    assert compare_text("p", cut, cut.text, SILENT, {EOS}, 4, may_end=False).ok
    assert not compare_text("p", cut, cut.text, SILENT, {EOS}, 7, may_end=False).ok  # two more: one cut only
    plain = ref([" a", " b", " c"])  # no runner-up that cuts the same text: the count is exact
    assert not compare_text("p", plain, " a b c", SILENT, {EOS}, 4, may_end=False).ok


def test_an_unseen_special_token_followed_by_the_same_text_is_a_near_tie_only_just_before():
    # Seen on engine-a (bf16) past EOS: the reference chose "\n" at token 3 with <|im_end|> as its
    # runner-up; the stack took <|im_end|>, then "\n" too, then went on ("<|im_start|>assistant").
    tokens = [" a", " b", " c", "\n", "Choose", " one"]
    tied = ref(tokens, eos_runner_up=(3,))
    verdict = compare_text("p", tied, " a b c\nassistant one", SILENT, {EOS}, 6, may_end=False)
    assert verdict.ok and "near-tie at token 3" in verdict.reason, verdict
    # Without the special runner-up, or with it too far back to explain the divergence, it fails.
    assert not compare_text("p", ref(tokens), " a b c\nassistant one", SILENT, {EOS}, 6, may_end=False).ok
    far = ref([" a", " b", " c", " d", " e", " f"], eos_runner_up=(1,))
    assert not compare_text("p", far, " a b c d zzz", SILENT, {EOS}, 6, may_end=False).ok


def test_an_end_where_the_reference_had_it_as_runner_up_is_a_near_tie():
    assert compare_text("p", ref([" a", " b", " c"], eos_runner_up=(2,)), " a b", SILENT, {EOS}, 2).ok
    assert not compare_text("p", ref([" a", " b", " c"]), " a b", SILENT, {EOS}, 2).ok
    stopped = ref([" a", " b"], stop=True)
    assert compare_text("p", stopped, " a b", SILENT, {EOS}, 3).ok  # the stack counted its EOS
    assert compare_text("p", stopped, " a b more", SILENT, {EOS}, 3).ok  # went on with the runner-up
    assert not compare_text("p", stopped, " a b zzz", SILENT, {EOS}, 3).ok


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(reference, "_MEMO", {})
    monkeypatch.setattr(reference, "weights_checksum", lambda _dir: "w")
    made = []

    def fake_generate(_dir, prompts, top_k, log):
        made.extend(p.id for p in prompts)
        return [ref([" " + p.text]) for p in prompts]

    monkeypatch.setattr(reference, "generate_reference", fake_generate)
    return tmp_path / "cache" / "references", made


PROMPTS = [Prompt(id=f"p{i}", text=f"w{i}", chat=False, max_tokens=4) for i in range(3)]


def test_references_are_cached_one_file_each_and_computed_once(cache, tmp_path):
    folder, made = cache
    first = reference.reference_outputs(tmp_path, PROMPTS[:2])
    again = reference.reference_outputs(tmp_path, PROMPTS)
    assert made == ["p0", "p1", "p2"] and again[:2] == first and len(list(folder.glob("*.json"))) == 3


@pytest.mark.parametrize("how", ["rewrite", "delete"])
def test_a_reference_file_changed_during_the_run_is_caught(cache, tmp_path, how):
    folder, _ = cache
    reference.reference_outputs(tmp_path, PROMPTS[:1])
    [path] = folder.glob("*.json")
    if how == "rewrite":  # a stack making the oracle agree with it
        data = json.loads(path.read_text())
        data["generation"]["tokens"] = [" anything"]
        path.write_text(json.dumps(data))
    else:
        path.unlink()
    with pytest.raises(reference.ReferenceTampered, match="changed during this run"):
        reference.reference_outputs(tmp_path, PROMPTS[:1])


def test_a_file_whose_content_hash_is_wrong_is_recomputed(cache, tmp_path, monkeypatch):
    folder, made = cache
    reference.reference_outputs(tmp_path, PROMPTS[:1])
    [path] = folder.glob("*.json")
    data = json.loads(path.read_text())
    data["generation"]["tokens"] = [" anything"]
    path.write_text(json.dumps(data))
    monkeypatch.setattr(reference, "_MEMO", {})  # a later run reads it
    [got] = reference.reference_outputs(tmp_path, PROMPTS[:1])
    assert got.tokens == [" w0"] and made == ["p0", "p0"]


def test_a_stack_that_prints_special_tokens_is_compared_with_them_too():
    # At token 1 the stack took (and printed) end-of-sequence, the reference's runner-up there.
    tied = ref([" the", "\n", " x"], eos_runner_up=(1,))
    assert compare_text("p", tied, " the<|im_end|>\n<|im_start|>y", SILENT, {EOS}, 3, may_end=False).ok
    assert not compare_text("p", tied, " the\n<|im_start|>y", SILENT, {EOS}, 3, may_end=False).ok
    assert not compare_text("p", ref([" the", " cat", " sat"]), " the<|im_end|><|im_start|> dog", SILENT, {EOS}, 3,
                            may_end=False).ok


def emoji_reference() -> Generation:
    """'Answer: 🌟 ok' as SmolLM2 spells it: the star is three byte tokens, each printed alone as U+FFFD."""
    tokens = ["Answer", ":", " ", "\ufffd", "\ufffd", "\ufffd", " ok", "!"]
    top = [{t: -0.1, " maybe": -0.3} for t in tokens]
    top[4] = {"\ufffd": -0.6, "\ufffd\ufffd": -0.8, " maybe": -0.9}  # the star's second byte, and another
    return Generation(tokens=tokens, top=top, finish_reason="length", text="Answer: 🌟 ok!",
                      ends=[6, 7, 8, 8, 8, 9, 12, 13])


@pytest.mark.parametrize("text, ok, says", [
    ("Answer: 🌟 ok!", True, ""),
    ("Answer: 🌟 ok", False, "text differs at token 7"),     # the last token is plain text: not held back
    ("Answer: 🌈 and so on", True, "near-tie at token 4"),   # another character from the star's second byte
    ("Answer: 🌟 maybe", True, "near-tie at token 6"),       # placed by the ends, not by U+FFFD's one char each
    ("Answer: 🌟 no", False, "text differs at token 6"),
    ("Answer: x", False, "text differs at token 5"),         # an ASCII letter is no byte of a character
])
def test_multibyte_characters_are_placed_by_the_reference_s_ends(text, ok, says):
    verdict = compare_text("p", emoji_reference(), text, SILENT, {EOS}, 8, may_end=False)
    assert verdict.ok == ok and says in verdict.reason, verdict


def test_a_character_cut_by_max_tokens_may_be_held_back_or_printed():
    tokens = ["Answer", ":", " ", "\ufffd", "\ufffd"]  # max_tokens ended inside the star
    gen = Generation(tokens=tokens, top=[{t: -0.1} for t in tokens], finish_reason="length", text="Answer: \ufffd",
                     ends=[6, 7, 8, 8, 8])
    assert compare_text("p", gen, "Answer: ", SILENT, {EOS}, 5, may_end=False).ok
    assert compare_text("p", gen, "Answer: \ufffd", SILENT, {EOS}, 5, may_end=False).ok
    assert not compare_text("p", gen, "Answer: 🌟", SILENT, {EOS}, 5, may_end=False).ok


def test_the_reference_records_where_each_token_s_text_ends():
    from transformers import AutoTokenizer

    from harness.assets import ensure_model

    tok = AutoTokenizer.from_pretrained(ensure_model("smollm2-135m-instruct"))
    ids = tok.encode("Answer: 🌟 ok")  # Answer, :, " " and the star's first byte, its second, its third, " ok"
    gen = reference._generation(tok, reference._Row([], len(ids), frozenset(), tokens=ids), frozenset(), False)
    assert gen.text == "Answer: 🌟 ok" and gen.tokens[2:5] == [" \ufffd", "\ufffd", "\ufffd"]
    assert [gen.text[a:b] for a, b in zip([0, *gen.ends], gen.ends)] == ["Answer", ":", " ", "", "🌟", " ok"]
    # The star's first byte came with the space: a stack that took another character there is judged
    # from that token's start.
    gen.top = [{t: -0.1} for t in gen.tokens]
    gen.top[2][" \ufffd\ufffd"], gen.top[2][" maybe"] = -0.5, -0.7
    verdict = compare_text("p", gen, "Answer: 🎉!", SILENT, {EOS}, len(ids), may_end=False)
    assert verdict.ok and "near-tie at token 2" in verdict.reason, verdict
    assert not compare_text("p", gen, "Answer:🎉!", SILENT, {EOS}, len(ids), may_end=False).ok
    del gen.top[2][" \ufffd\ufffd"]  # no other byte there: the star's own byte is no runner-up of itself
    assert not compare_text("p", gen, "Answer: 🎉!", SILENT, {EOS}, len(ids), may_end=False).ok
    step = [(ids[2], -0.1), (tok.encode(" ✨")[0], -0.2), (tok.encode(" ok")[0], -0.3)]  # two print " \ufffd"
    assert list(reference._by_text(tok, step)) == [" \ufffd", " \ufffd\ufffd", " ok"]


@pytest.mark.parametrize("text, usage, ok, says", [
    (" the cat sat", 4, True, "end-of-sequence at token 3 of 6"),  # stopped where the model chose EOS
    (" the cat sat", 3, True, "end-of-sequence at token 3 of 6"),  # its EOS left out of the count
    (" the cat sat and ran", 6, True, ""),                          # it went on after all: the reference's
    (" the cat", 3, False, "text differs at token 2"),              # stopped where the model did not
    (" the dog sat", 4, False, "text differs at token 1"),
    (" the cat sat", 9, False, "usage says 9 tokens"),
])
def test_a_stack_that_cannot_ignore_eos_is_judged_to_the_references_first_eos(text, usage, ok, says):
    """Seen on mlx-lm (setting A, ignore_eos requests): it stops where the model chooses <|im_end|>,
    as its spec declares (`ignore_eos: unsupported`); the reference went on past it. Its text is
    right to that point, so it is judged as a request without ignore_eos would be, and no further."""
    from harness.oracle import judge_texts

    prompt = Prompt(id="p", text="x", chat=False, max_tokens=6, ignore_eos=True)
    verdict = judge_texts([prompt], [ref(TOKENS)], [text], SILENT, {EOS}, [usage], stops_at_eos=True)
    (judged,) = verdict.prompts
    assert judged.ok == ok and says in judged.reason, judged
    # A stack that says it ignores EOS and stops there anyway fails, as before.
    strict = judge_texts([prompt], [ref(TOKENS)], [text], SILENT, {EOS}, [usage])
    assert strict.prompts[0].ok == (text == " the cat sat and ran"), strict.prompts[0]
