"""skills/cpu_kernels/greedy_head.cpp: the int8 screen of the lm_head picks the token small_gemm's
bf16 head would, bit for bit, on near-ties made on purpose too; without its bound it would not."""

from __future__ import annotations

import pytest
import torch

from skills.cpu_kernels import native
from skills.engine_core.kernels import Kernels

ext = native()
pytestmark = pytest.mark.skipif(ext is None or not ext.greedy_screen_available(),
                                reason="the screen needs the C++ kernels with AVX-512 BF16")
BF16 = torch.bfloat16


def head_argmax(x: torch.Tensor, head: torch.Tensor, n: int) -> torch.Tensor:
    return ext.small_gemm(x, head, n).argmax(dim=-1)


def near_ties(n: int, k: int, seed: int) -> torch.Tensor:
    """Every token one shared row plus a few bf16 steps of noise: far below the int8 screen's step
    (max |w| / 127), so its logits barely tell the tokens apart while the bf16 head's still do."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(k, generator=g)
    steps = torch.randint(-3, 4, (n, k), generator=g).float() * 2.0 ** -9
    return (base + steps * base.abs()).to(BF16)


@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("n", [1000, 1003])  # whole 16-token tiles; a partial last one
def test_screen_picks_the_heads_argmax(rows, n) -> None:
    torch.manual_seed(rows * n)
    k = 96
    spread = torch.randn(n, k, dtype=BF16) * 0.05
    for w in (spread, near_ties(n, k, seed=rows)):
        q, scales = ext.greedy_screen_pack(w)
        head = ext.small_gemm_pack(w)
        for trial in range(20):
            x = (torch.randn(rows, k) * (1 + trial)).to(BF16)
            assert torch.equal(ext.greedy_screen_ids(x, q, scales, head, n), head_argmax(x, head, n)), trial


def test_screen_keeps_the_first_of_equal_logits() -> None:
    """Tokens with the same row give the same logit: argmax keeps the first, in another tile too."""
    torch.manual_seed(0)
    w = torch.randn(200, 64, dtype=BF16) * 0.05
    x = torch.randn(1, 64, dtype=BF16)
    best = int(head_argmax(x, ext.small_gemm_pack(w), 200))
    w[150], w[190] = w[best], w[best]
    got = ext.greedy_screen_ids(x, *ext.greedy_screen_pack(w), ext.small_gemm_pack(w), 200)
    assert got.tolist() == [min(best, 150)]


def test_without_its_bound_the_screen_picks_other_tokens() -> None:
    """The check can fail: the screen's own best tile alone (margin 0) misses near-tie winners."""
    n, k = 1000, 96
    w = near_ties(n, k, seed=5)
    q, scales = ext.greedy_screen_pack(w)
    head = ext.small_gemm_pack(w)
    wrong = 0
    for trial in range(20):
        x = torch.randn(1, k, generator=torch.Generator().manual_seed(trial)).to(BF16)
        want = head_argmax(x, head, n)
        assert torch.equal(ext.greedy_screen_ids(x, q, scales, head, n), want)
        wrong += not torch.equal(ext.greedy_screen_ids(x, q, scales, head, n, margin=0.0), want)
    assert wrong > 0


def test_a_logit_that_is_not_finite_leaves_the_choice_to_the_head() -> None:
    w = torch.randn(64, 32, dtype=BF16)
    x = torch.randn(1, 32, dtype=BF16)
    x[0, 3] = float("inf")
    assert ext.greedy_screen_ids(x, *ext.greedy_screen_pack(w), ext.small_gemm_pack(w), 64).tolist() == [-1]
    broken = w.clone()
    broken[7, 5] = float("nan")  # a broken weight: the screen cannot bound that token
    x = torch.randn(1, 32, dtype=BF16)
    assert ext.greedy_screen_ids(x, *ext.greedy_screen_pack(broken), ext.small_gemm_pack(broken), 64).tolist() == [-1]
    with pytest.raises(RuntimeError, match="1..4"):
        ext.greedy_screen_ids(torch.randn(5, 32, dtype=BF16), *ext.greedy_screen_pack(w), ext.small_gemm_pack(w), 64)


def test_engine_decodes_the_same_tokens_with_the_screen(hf_model) -> None:
    """Greedy requests through the engine (decodes of 1-3 rows, or of 1 where small_gemm runs on AMX
    tiles and the screen takes 1 row; prompts ending in a step): the same tokens with the screen as
    without, and the screen did pick them (its calls counted)."""
    from skills.engine_core.config import ModelConfig
    from skills.engine_core.engine import EngineConfig, LLMEngine
    from skills.engine_core.packing import greedy_screen_rows
    from skills.engine_core.runner import ModelRunner
    from skills.engine_core.weights import build_model
    from skills.engine_api import SamplingParams

    prompts = [[5, 6, 7], list(range(10, 40)), [20, 21], list(range(50, 61)), [8]]

    def generate(screen: bool) -> tuple[list[list[int]], int]:
        seqs = min(3, greedy_screen_rows())
        cfg = EngineConfig(max_num_seqs=seqs, max_num_batched_tokens=8, max_model_len=128, dtype="bfloat16",
                           greedy_screen=screen)
        model = build_model(ModelConfig.from_hf(hf_model.config), dict(hf_model.state_dict()), BF16)
        model.pack()
        runner = ModelRunner(model, seqs, 128, BF16)
        runner.engine_cfg = cfg
        picked = []
        screen_ids = model.greedy_ids
        model.greedy_ids = lambda x: picked.append(screen_ids(x)) or picked[-1]
        engine = LLMEngine(runner, None, frozenset({2}), cfg)
        outs: list[list] = [[] for _ in prompts]
        for prompt, out in zip(prompts, outs):
            engine.add_request(prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True), out.extend)
        engine.run_until_idle()
        return [[o.token_id for o in out] for out in outs], sum(ids is not None for ids in picked)

    assert Kernels.use_native()
    try:
        (screened, used), (plain, unused) = generate(True), generate(False)
    finally:
        Kernels.use_native(False)
    assert screened == plain
    assert used > 10 and unused == 0
