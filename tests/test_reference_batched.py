"""Batched reference generation gives every prompt what it gets alone: the same tokens, end and
text, and top-k logprobs equal up to float rounding (batched float32 matmuls may round otherwise)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from harness.generation import Generation, Prompt
from harness.reference import generate_reference, input_ids

VOCAB = 120
EOS = 2
TOP_K = 5
# logprobs: batched against alone they differ by up to ~3e-5 here, while every greedy choice leads
# the runner-up by 0.002 or more, so tokens are compared exactly
TOLERANCE = 1e-3
CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}"
                 "{% if add_generation_prompt %} w3 w4{% endif %}")


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(3, VOCAB)}" for _ in range(n))


def _prompts() -> list[Prompt]:
    """Lengths from 1 to 40 tokens, max_tokens from 1 to 24, chat and plain, ignore_eos and not;
    STOPPER's greedy path reaches EOS early (see `tiny`), alone and past EOS."""
    rng = random.Random(3)
    mix = [(1, False, 7, False), (40, True, 12, False), (11, False, 1, False), (5, False, 16, True),
           (2, True, 9, True), (23, False, 24, False), (8, True, 3, False), (17, False, 20, True)]
    prompts = [Prompt(id=f"p{n}", text=_words(rng, length), chat=chat, max_tokens=max_tokens, ignore_eos=past)
               for n, (length, chat, max_tokens, past) in enumerate(mix)]
    return prompts + [STOPPER, Prompt(id="stopper-past-eos", text=STOPPER.text, chat=False, max_tokens=14,
                                      ignore_eos=True)]


STOPPER = Prompt(id="stopper", text="w10 w11 w12 w13 w14 w15", chat=False, max_tokens=14)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": EOS} | {f"w{i}": i for i in range(3, VOCAB)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                   unk_token="<unk>", chat_template=CHAT_TEMPLATE)


def _model(architecture: str):
    """Llama (rotary positions, which only tell relative distances) or GPT-2 (absolute positions:
    a row's positions that count its padding change its output)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # A wide initialisation gives peaked logits: a random model's near-uniform ones would put
    # near-ties (a flip from rounding alone) everywhere.
    common = {"vocab_size": VOCAB, "initializer_range": 0.3, "tie_word_embeddings": True, "bos_token_id": 1,
              "eos_token_id": EOS, "pad_token_id": EOS}
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common))
    with torch.no_grad():  # norms are initialised to ones; random ones test them too
        for name, p in model.named_parameters():
            if ("norm" in name or ".ln_" in name) and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def _rename(model, a: int, b: int) -> None:
    """Swap two token ids in the (tied) embedding: the same model, with the two names exchanged."""
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[[a, b]] = emb[[b, a]]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model runs faster on one thread, most of all on a busy machine (and the real one's
    single test is short)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tiny(NamedTuple):
    model_dir: Path
    stop_step: int  # the step (from 1) at which STOPPER chooses EOS


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, tmp_path_factory) -> Tiny:
    """A seeded random model with a word tokenizer, in which a token STOPPER chooses after a few
    steps is renamed to EOS, so that it ends there (and an ignore_eos prompt goes on past it)."""
    folder = tmp_path_factory.mktemp(request.param)
    tok, model = _tokenizer(), _model(request.param)
    step, choice = _new_choice(model, input_ids(tok, STOPPER))
    _rename(model, choice, EOS)
    model.generation_config.eos_token_id = EOS
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Tiny(folder, step)


def _new_choice(model, ids: list[int], first: int = 3) -> tuple[int, int]:
    """The first greedy choice from step `first` on that is not in the prompt or chosen before:
    (its step, the token), so renaming it changes nothing earlier."""
    seen, sequence = set(ids), torch.tensor([ids])
    with torch.inference_mode():
        for step in range(1, STOPPER.max_tokens):
            choice = int(model(input_ids=sequence).logits[0, -1].argmax())
            if step >= first and choice not in seen:
                return step, choice
            seen.add(choice)
            sequence = torch.cat([sequence, torch.tensor([[choice]])], dim=-1)
    raise AssertionError("STOPPER's greedy path has no new token to rename to EOS; pick another seed")


def one_at_a_time(model_dir: Path, prompts: list[Prompt], top_k: int = TOP_K) -> list[Generation]:
    """The reference as it was computed before batching: transformers' generate per prompt, or a
    plain greedy loop past end-of-sequence for ignore_eos."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    out = []
    for prompt in prompts:
        ids = torch.tensor([input_ids(tok, prompt)])
        with torch.inference_mode():
            if prompt.ignore_eos:
                new, logits = _loop_past_eos(model, ids, prompt.max_tokens)
            else:
                res = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=prompt.max_tokens, output_logits=True,
                                     return_dict_in_generate=True, pad_token_id=tok.pad_token_id,
                                     repetition_penalty=None, temperature=None, top_p=None, top_k=None)
                new, logits = res.sequences[0, ids.shape[1]:].tolist(), [step[0] for step in res.logits]
        top = [_top(tok, step, top_k) for step in logits]
        stopped = not prompt.ignore_eos and bool(new) and new[-1] == eos
        kept = new[:-1] if stopped else new
        out.append(Generation(tokens=[tok.decode([i]) for i in kept], top=top, finish_reason="stop" if stopped
                              else "length", text=tok.decode(kept, skip_special_tokens=True,
                                                             clean_up_tokenization_spaces=False)))
    return out


def _top(tok, logits: torch.Tensor, top_k: int) -> dict[str, float]:
    values, idx = torch.log_softmax(logits, dim=-1).topk(top_k)
    return {tok.decode([i]): v for v, i in zip(values.tolist(), idx.tolist())}


def _loop_past_eos(model, ids: torch.Tensor, max_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    tokens, logits = [], []
    while len(tokens) < max_tokens:
        step = model(input_ids=ids).logits[0, -1]  # no cache: the whole sequence every step
        logits.append(step)
        tokens.append(int(step.argmax()))
        ids = torch.cat([ids, torch.tensor([[tokens[-1]]])], dim=-1)
    return tokens, logits


def assert_same(got: Generation, want: Generation, tolerance: float = TOLERANCE) -> None:
    assert (got.tokens, got.finish_reason, got.text) == (want.tokens, want.finish_reason, want.text)
    assert len(got.top) == len(want.top), "a step too many or too few"
    for step, (g, w) in enumerate(zip(got.top, want.top)):
        for token in g.keys() & w.keys():
            assert abs(g[token] - w[token]) <= tolerance, (step, token, g[token], w[token])
        # a token in one top-k only is a tie with the other's last entry
        for mine, other in ((g, w), (w, g)):
            for token in mine.keys() - other.keys():
                assert abs(mine[token] - min(other.values())) <= tolerance, (step, token, mine, other)


@pytest.fixture(scope="module")
def alone(tiny) -> list[Generation]:
    return one_at_a_time(tiny.model_dir, _prompts())


def test_the_prompts_cover_an_early_end_a_length_end_and_a_path_past_eos(tiny, alone):
    by_id = dict(zip((p.id for p in _prompts()), alone))
    stopper = by_id["stopper"]
    assert stopper.finish_reason == "stop" and len(stopper.tokens) == tiny.stop_step - 1
    assert len(stopper.top) == tiny.stop_step  # the step that chose EOS has its top-k too
    assert max(stopper.top[-1], key=stopper.top[-1].get) == "</s>"
    past = by_id["stopper-past-eos"]
    assert past.finish_reason == "length" and len(past.tokens) == 14 and past.tokens[tiny.stop_step - 1] == "</s>"
    assert "</s>" not in past.text  # special tokens are left out of the text
    assert any(g.finish_reason == "length" and not p.ignore_eos and p.max_tokens > 1
               for p, g in zip(_prompts(), alone))


@pytest.mark.parametrize("batch_size", [1, 3, 4, 16])
def test_batched_references_equal_one_prompt_at_a_time(tiny, alone, batch_size):
    batched = generate_reference(tiny.model_dir, _prompts(), TOP_K, batch_size=batch_size)
    for prompt, got, want in zip(_prompts(), batched, alone):
        assert len(got.tokens) <= prompt.max_tokens, prompt.id
        assert_same(got, want)


def test_a_prompt_is_unchanged_by_the_others_in_its_batch(tiny):
    """The same prompt first alone, then beside longer and shorter ones that end before and after it."""
    prompts = _prompts()
    [alone] = generate_reference(tiny.model_dir, [prompts[5]], TOP_K)
    together = generate_reference(tiny.model_dir, prompts, TOP_K, batch_size=len(prompts))[5]
    assert_same(together, alone)


REAL_PROMPTS = [
    Prompt(id="capital", text="The capital of France is", chat=False, max_tokens=12),
    Prompt(id="sum", text="What is 2+2? Answer with one number.", chat=True, max_tokens=16),
    Prompt(id="haiku", text="Write a haiku about the sea.\n", chat=False, max_tokens=24, ignore_eos=True),
    Prompt(id="explain", text="Explain in two sentences why the sky is blue, then name one colour of a sunset.",
           chat=True, max_tokens=20),
    Prompt(id="list", text="List three prime numbers:", chat=False, max_tokens=8),
]


@pytest.mark.slow
def test_batched_references_on_the_real_model_equal_one_prompt_at_a_time():
    from harness.assets import ensure_model

    model_dir = ensure_model("smollm2-135m-instruct")
    alone = one_at_a_time(model_dir, REAL_PROMPTS)
    assert any(g.finish_reason == "stop" for g in alone)
    for got, want in zip(generate_reference(model_dir, REAL_PROMPTS, TOP_K, batch_size=len(REAL_PROMPTS)), alone):
        assert_same(got, want)
