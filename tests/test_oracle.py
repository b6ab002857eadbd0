"""The cross-implementation oracle passes a faithful stack and a genuine near-tie, fails wrong ones."""
from harness.generation import Generation
from harness.oracle import compare, judge

EOS = {"<|im_end|>"}


def ref_gen() -> Generation:
    tokens = ["The", " capital", " of", " France", " is", " Paris", "."]
    top = [{t: -0.1, " a": -2.5, " the": -3.0, " it": -3.5, " x": -4.0} for t in tokens]
    top.append({"<|im_end|>": -0.05, "\n": -3.2, " It": -4.0, " The": -4.5, " A": -5.0})
    return Generation(tokens=tokens, top=top, finish_reason="stop")


def stack_gen(tokens, finish="stop", top=None) -> Generation:
    top = top if top is not None else [{t: -0.1, " a": -2.5} for t in tokens]
    return Generation(tokens=list(tokens), top=top, finish_reason=finish, usage_tokens=len(tokens))


def test_identical_output_passes():
    v = compare("p", ref_gen(), stack_gen(ref_gen().tokens), EOS)
    assert v.ok and v.diverged_at is None and v.matched == 7


def test_one_token_changed_mid_sequence_fails():
    tokens = ref_gen().tokens
    tokens[4] = " was"  # not in the reference's top-5 at step 4
    v = compare("p", ref_gen(), stack_gen(tokens), EOS)
    assert not v.ok and v.diverged_at == 4 and "' was'" in v.reason


def test_empty_output_fails():
    assert not compare("p", ref_gen(), stack_gen([], finish="length"), EOS).ok
    assert not compare("p", ref_gen(), stack_gen([], finish="stop"), EOS).ok


def test_near_tie_passes_when_each_token_is_in_the_others_top5():
    tokens = ref_gen().tokens[:3] + [" a", " big", " city"]
    top = [{t: -0.1} for t in tokens]
    top[3] = {" a": -1.0, " France": -1.01}  # the stack saw the reference's token as a close second
    v = compare("p", ref_gen(), stack_gen(tokens, top=top), EOS)
    assert v.ok and v.diverged_at == 3 and "near-tie" in v.reason


def test_one_sided_tie_fails():
    tokens = ref_gen().tokens[:3] + [" a", " big"]
    top = [{t: -0.1} for t in tokens]  # the reference's " France" is not among the stack's alternatives
    assert not compare("p", ref_gen(), stack_gen(tokens, top=top), EOS).ok


def test_stopping_early_on_eos_only_when_eos_was_a_close_alternative():
    ref = ref_gen()
    early = stack_gen(ref.tokens[:5], finish="stop")
    assert not compare("p", ref, early, EOS).ok
    ref.top[5]["<|im_end|>"] = -1.2
    assert compare("p", ref, early, EOS).ok


def test_running_past_the_reference_eos_needs_eos_in_the_stack_top():
    ref = ref_gen()
    longer = ref.tokens + ["\n"]
    top = [{t: -0.1} for t in longer]
    assert not compare("p", ref, stack_gen(longer, finish="length", top=top), EOS).ok
    top[7] = {"\n": -1.0, "<|im_end|>": -1.1}
    assert compare("p", ref, stack_gen(longer, finish="length", top=top), EOS).ok


def test_stopping_for_length_too_early_fails():
    v = compare("p", ref_gen(), stack_gen(ref_gen().tokens[:4], finish="length"), EOS)
    assert not v.ok and "stopped for length" in v.reason


def test_usage_disagreeing_with_tokens_fails():
    got = stack_gen(ref_gen().tokens)
    got.usage_tokens = 3
    assert not compare("p", ref_gen(), got, EOS).ok


def test_verdict_needs_every_prompt_and_at_least_one():
    good, bad = stack_gen(ref_gen().tokens), stack_gen([], finish="length")
    assert judge(["a", "b"], [ref_gen()] * 2, [good, good], EOS).ok
    assert not judge(["a", "b"], [ref_gen()] * 2, [good, bad], EOS).ok
    assert not judge([], [], [], EOS).ok


def test_a_listed_final_eos_token_is_the_same_as_stopping():
    tokens = ref_gen().tokens + ["<|im_end|>"]
    top = [{t: -0.1} for t in tokens]
    assert compare("p", ref_gen(), stack_gen(tokens, top=top), EOS).ok


def test_running_past_the_reference_eos_where_the_stack_printed_its_eos_empty():
    """Seen on llama.cpp (llama-cpp-python 0.3.36, A's accuracy cell): its completions logprobs list
    <|im_end|> as '' (special tokens are not rendered), so the reference's end-of-sequence, its close
    second, read as missing there. A token printing nothing in the stack's top-k may be it; the
    stack's own token must still be in the reference's top-k."""
    ref = ref_gen()
    longer = ref.tokens + ["\n"]
    top = [{t: -0.1} for t in longer]
    top[7] = {"\n": -1.34, "": -1.6, ".": -1.87}
    assert compare("p", ref, stack_gen(longer, finish="length", top=top), EOS).ok
    other = ref.tokens + ["!"]  # a token the reference's top-5 lacks
    assert not compare("p", ref, stack_gen(other, finish="length", top=top[:7] + [{"!": -1.3, "": -1.6}]), EOS).ok
    top[7] = {"\n": -1.34, ".": -1.87}
    assert not compare("p", ref, stack_gen(longer, finish="length", top=top), EOS).ok
