"""engine_core's batched sampler: the distribution it draws from, the top-p cut, seeded repeatability
and rows independent of the batch they share a step with."""
from __future__ import annotations

import pytest
import torch

from skills.engine_core.sampler import SampleRequest, sample
from skills.engine_api import SamplingParams

VOCAB = 49152


@pytest.fixture(autouse=True, params=["torch", "native"])
def sampler_path(request):
    """Every test on both paths: torch ops, and skills/cpu_kernels' top_p.cpp (where it builds)."""
    from skills.engine_core.kernels import Kernels

    if request.param == "native" and not Kernels.use_native():
        pytest.skip("the C++ kernels cannot be built here")
    yield request.param
    Kernels.use_native(False)


def _request(seed: int | None, temperature: float = 1.0, top_p: float = 1.0) -> SampleRequest:
    params = SamplingParams(max_tokens=1, temperature=temperature, top_p=top_p, seed=seed)
    return SampleRequest(params, torch.Generator().manual_seed(seed) if seed is not None else None)


def _frequencies(logits: torch.Tensor, draws: int, **params) -> torch.Tensor:
    """One row sampled `draws` times in one batch (every row its own seed)."""
    ids, _ = sample(logits.expand(draws, -1).clone(), [_request(i, **params) for i in range(draws)])
    return torch.bincount(torch.tensor(ids), minlength=logits.shape[1]).double() / draws


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    values, order = probs.sort(descending=True)
    kept = order[(values.cumsum(0) - values) < top_p]
    out = torch.zeros_like(probs)
    out[kept] = probs[kept] / probs[kept].sum()
    return out


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_draws_follow_the_temperature_scaled_softmax(temperature):
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0, 3.0]])
    seen = _frequencies(logits, 40_000, temperature=temperature)
    want = torch.softmax(logits[0].double() / temperature, dim=-1)
    assert torch.allclose(seen, want, atol=0.01), (seen, want)


@pytest.mark.parametrize("top_p", [0.3, 0.7, 0.95])
def test_top_p_keeps_exactly_the_nucleus_and_renormalises_it(top_p):
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0, 3.0]])
    seen = _frequencies(logits, 40_000, top_p=top_p)
    want = _nucleus(torch.softmax(logits[0].double(), dim=-1), top_p)
    assert torch.all(seen[want == 0] == 0), "a token outside the nucleus was drawn"
    assert torch.allclose(seen, want, atol=0.01), (seen, want)


def _rows(tail_logit: float) -> torch.Tensor:
    """16 rows: one token at 0 over a vocabulary of noise around `tail_logit`, which a 0.9-nucleus
    must reach into."""
    gen = torch.Generator().manual_seed(3)
    logits = tail_logit + 0.1 * torch.randn(16, VOCAB, generator=gen)
    logits[:, 7] = 0.0
    return logits


@pytest.mark.parametrize("tail_logit, lightest", [(-5.0, (1e-3, 1.0)), (-8.0, (1e-5, 1e-3)), (-12.0, (0.0, 1e-5))],
                         ids=["the heads", "the wider heads", "the whole sort"])
def test_every_nucleus_width_stays_inside_the_sorted_nucleus(tail_logit, lightest):
    """Each of the three places top-p looks draws only from the nucleus a full sort finds; the case
    is built so that its nucleus's lightest token (against the heaviest) falls where it says."""
    logits = _rows(tail_logit)
    ids, _ = sample(logits.clone(), [_request(i, top_p=0.9) for i in range(16)])
    for row, token in zip(logits, ids):
        probs = torch.softmax(row.double(), dim=-1)
        nucleus = _nucleus(probs, 0.9)
        floor = float(probs[nucleus > 0].min() / probs.max())
        assert lightest[0] <= floor < lightest[1], "the case does not reach the place it names"
        assert nucleus[token] > 0


def test_a_seeded_row_draws_the_same_tokens_whatever_shares_its_step():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(12, VOCAB, generator=gen) * 2
    params = [dict(top_p=1.0), dict(top_p=0.9), dict(temperature=0.7, top_p=0.95)] * 4
    together, _ = sample(logits.clone(), [_request(i, **p) for i, p in enumerate(params)])
    alone = [sample(logits[i:i + 1].clone(), [_request(i, **p)])[0][0] for i, p in enumerate(params)]
    again, _ = sample(logits.clone(), [_request(i, **p) for i, p in enumerate(params)])
    assert together == alone == again


def test_greedy_rows_beside_sampled_ones_take_the_argmax():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(6, VOCAB, generator=gen)
    requests = [_request(None, temperature=0.0) if i % 2 else _request(i) for i in range(6)]
    ids, _ = sample(logits.clone(), requests)
    assert [ids[i] for i in (1, 3, 5)] == logits[[1, 3, 5]].argmax(dim=-1).tolist()


@pytest.mark.parametrize("vocab", [VOCAB, 37, 1])
def test_greedy_bf16_rows_take_torchs_argmax(vocab):
    """All-greedy bf16 steps (the native path's argmax_rows): the first of equal maxima, the first NaN
    of a row that has one, index 0 of an all -inf row, as torch.argmax picks; random rows too."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(8, vocab, generator=gen).to(torch.bfloat16)
    last = vocab - 1
    logits[1, last // 3] = logits[1, last] = 9.0  # two equal maxima: the first wins
    logits[2, last // 2], logits[2, last] = float("nan"), float("nan")  # NaN counts as the largest
    logits[3] = float("-inf")
    logits[4, last] = 20.0  # in the last block of 16 (a partial one at vocab 37)
    logits[5] = 0.0
    logits[5, last] = -0.0  # -0 equals +0: index 0 stays first
    ids, logprobs = sample(logits.clone(), [_request(None, temperature=0.0) for _ in range(8)])
    assert ids == logits.float().argmax(dim=-1).tolist()
    assert logprobs == [None] * 8
    if vocab > 2:
        assert ids[1] == last // 3 and ids[2] == last // 2 and ids[3] == 0 and ids[4] == last and ids[5] == 0


def test_different_seeds_draw_different_tokens_and_unseeded_requests_vary():
    logits = torch.zeros(64, VOCAB)  # uniform: any two draws collide with probability 1/VOCAB
    seeded, _ = sample(logits.clone(), [_request(i) for i in range(64)])
    unseeded, _ = sample(logits.clone(), [_request(None) for _ in range(64)])
    assert len(set(seeded)) > 60 and len(set(unseeded)) > 60


def test_logprobs_are_of_the_raw_distribution_and_the_logits_are_left_alone():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    kept = logits.clone()
    params = SamplingParams(max_tokens=1, temperature=0.5, top_p=0.5, seed=1, top_logprobs=2)
    ids, logprobs = sample(logits, [SampleRequest(params, torch.Generator().manual_seed(1))])
    raw = torch.log_softmax(kept[0], dim=-1)
    assert ids == [0] and logprobs[0].logprob == pytest.approx(float(raw[0]))
    assert torch.equal(logits, kept), "sampling changed the caller's logits"


def test_a_step_with_no_row_to_sample_gives_no_tokens():
    """A step of prefill chunks that finish no prompt samples nothing."""
    assert sample(torch.zeros(0, VOCAB), []) == ([], [])
