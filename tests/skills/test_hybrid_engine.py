"""skills/hybrid_engine on the tiny olmo_hybrid model (real weights, no mocks): greedy outputs equal
transformers' on the whole prompt; with the prefix cache on they equal the same engine's with it
off token for token (prompt ends on, just before and just past snapshot blocks, tails shorter than
a block, prompts shorter than a block, branching, concurrent requests); hits are reported and
really skip prefill; the forward is split invariant (chunking never changes a bit)."""

from __future__ import annotations

import random

import pytest
import torch

from skills.hybrid_engine.config import EngineConfig
from skills.hybrid_engine.loader import load_engine
from skills.engine_api import SamplingParams

BLOCK = 64
THREADS = 1  # a shared machine (as the other real-model tests)
OUT = 8
GREEDY = SamplingParams(max_tokens=OUT, temperature=0.0, ignore_eos=True)
_rng = random.Random(20261202)


def ids(n: int) -> list[int]:
    return [_rng.randrange(100, 49000) for _ in range(n)]


@pytest.fixture(scope="module")
def model_dir():
    from harness.assets import ensure_model

    return ensure_model("olmo-hybrid-tiny")


def _engine(model_dir, prefix_cache: bool, **overrides):
    cfg = EngineConfig(**{"max_num_seqs": 8, "max_num_batched_tokens": 256, "max_model_len": 2048,
                          "threads": THREADS, "state_block": BLOCK, "prefix_cache": prefix_cache, **overrides})
    return load_engine(model_dir, cfg)


@pytest.fixture(scope="module")
def on(model_dir):
    return _engine(model_dir, True)


@pytest.fixture(scope="module")
def off(model_dir):
    return _engine(model_dir, False)


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def run(engine, prompts: list[list[int]], params: SamplingParams = GREEDY, together: bool = False):
    """Outputs (token ids) and cached_tokens per prompt: one after another, or all submitted at once."""
    outs: list[list] = [[] for _ in prompts]
    for i, prompt in enumerate(prompts):
        engine.add_request(prompt, params, outs[i].extend)
        if not together:
            engine.run_until_idle()
    engine.run_until_idle()
    return [[o.token_id for o in out if o.token_id is not None] for out in outs], [out[0].cached_tokens for out in outs]


def hf_greedy(hf, prompt: list[int], n: int = OUT) -> list[int]:
    x = torch.tensor([prompt])
    out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                      pad_token_id=2)
    return out[0, len(prompt):].tolist()


def test_greedy_equals_transformers_on_the_whole_prompt(on, hf) -> None:
    on.reset_prefix_cache()
    prefix = ids(300)
    prompts = [prefix + ids(20), prefix + ids(84), ids(5)]  # the second restores the first's block at 256
    got, cached = run(on, prompts)
    assert cached == [0, 256, 0]
    for prompt, tokens in zip(prompts, got):
        assert tokens == hf_greedy(hf, prompt)


def test_cache_on_equals_cache_off_at_block_edges(on, off) -> None:
    on.reset_prefix_cache()
    prefix = ids(3 * BLOCK + 10)  # shared prefix ending off the block grid
    warm = prefix + ids(41)
    # Prompt ends on, just before and just past block boundaries; a tail shorter than a block.
    tails = [4 * BLOCK - len(prefix), 4 * BLOCK - len(prefix) - 1, 4 * BLOCK - len(prefix) + 1, 5]
    prompts = [warm] + [prefix + ids(t) for t in tails]
    got_on, cached = run(on, prompts)
    got_off, cached_off = run(off, prompts)
    assert got_on == got_off
    # The first request after the warm-up restores the block snapshot under the divergence and
    # snapshots the divergence point itself; every later one restores the whole shared prefix.
    assert cached == [0, 3 * BLOCK, len(prefix), len(prefix), len(prefix)]
    assert cached_off == [0] * 5


def test_a_hit_skips_prefill_and_is_counted(on) -> None:
    on.reset_prefix_cache()
    prompt = ids(400)
    run(on, [prompt])
    before = on.metrics()
    _, cached = run(on, [prompt[:-1] + [7, 8]])
    after = on.metrics()
    assert cached == [399]  # the divergence is one before the end: the n-1 snapshot
    assert after["prefill_tokens_total"] - before["prefill_tokens_total"] == 401 - 399
    assert after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"] == 399
    assert after["prefix_cache_query_tokens"] - before["prefix_cache_query_tokens"] == 401
    assert after["prefix_cache_snapshots"] > 0 and after["prefix_cache_bytes"] > 0


def test_repeats_and_prompts_shorter_than_a_block(on, off) -> None:
    on.reset_prefix_cache()
    short = ids(10)
    prompts = [short, short, short + ids(3), ids(1), short]
    got_on, cached = run(on, prompts)
    assert got_on == run(off, prompts)[0]
    assert cached == [0, 9, 10, 0, 9]


def test_branching_and_radix_reuse(on, off) -> None:
    on.reset_prefix_cache()
    shared = ids(150)
    a, b = shared + ids(70), shared + ids(33)
    c = a + ids(50)  # extends a
    d = shared[:100] + ids(20)  # leaves the shared part inside a node
    prompts = [a, b, c, d, a + ids(1)]
    got_on, cached = run(on, prompts)
    assert got_on == run(off, prompts)[0]
    assert cached == [0, 128, len(a), 64, len(a)]
    assert on.metrics()["prefix_cache_nodes"] >= 4


def test_concurrent_requests_share_a_prefix(on, off) -> None:
    on.reset_prefix_cache()
    prefix = ids(260)
    prompts = [prefix + ids(n) for n in (7, 64, 65, 1)]
    before = on.metrics()["prefix_cache_deferrals"]
    got_on, cached = run(on, prompts, together=True)
    got_off, _ = run(off, prompts, together=True)
    assert got_on == got_off == run(off, prompts)[0]  # batched decodes equal one-at-a-time ones
    # Cold cache: the first prefills, the others wait for it and restore the shared prefix.
    assert cached[0] == 0 and cached[1:] == [260] * 3
    assert on.metrics()["prefix_cache_deferrals"] > before


def test_reset_forgets_and_logprobs(on) -> None:
    prompt = ids(200)
    run(on, [prompt])
    assert on.reset_prefix_cache()
    _, cached = run(on, [prompt])
    assert cached == [0]
    out: list = []
    on.add_request(prompt, SamplingParams(max_tokens=3, temperature=0.0, top_logprobs=2), out.extend)
    on.run_until_idle()
    first = out[0].logprobs
    assert first.token_id == out[0].token_id and len(first.top) == 2 and first.top[0][0] == first.token_id


def test_forward_is_split_invariant(on, model_dir) -> None:
    """The same prompt prefilled in one chunk and in uneven chunks beside other requests: the same
    logprobs bit for bit (what makes a restore at any token exact)."""
    if on.runtime["kernels"] != "native":
        pytest.skip("the torch fallback is not split invariant (skills/hybrid_engine/kernels.py)")
    prompt = ids(300)
    params = SamplingParams(max_tokens=4, temperature=0.0, top_logprobs=3, ignore_eos=True)

    def logprobs(engine, others: list[list[int]]):
        engine.reset_prefix_cache()
        out: list = []
        engine.add_request(prompt, params, out.extend)
        for other in others:
            engine.add_request(other, params, lambda outs: None)
        engine.run_until_idle()
        return [(o.token_id, o.logprobs.logprob, o.logprobs.top) for o in out]

    chunked = _engine(model_dir, True, max_num_batched_tokens=37)  # 37-row steps: chunks end anywhere
    assert logprobs(chunked, [ids(50), ids(120)]) == logprobs(on, [])


def test_the_cpp_layer_loop_gives_the_python_loops_bits(on, model_dir) -> None:
    """The decoder layers as one C++ call (kernels.cpp LayerLoop) against a Python call per kernel:
    prompts with a shared prefix (a cache hit, snapshots at save rows, decode rows reading the
    prefix once) and others beside them, the same tokens and logprobs bit for bit."""
    if on.runtime["kernels"] != "native":
        pytest.skip("the layer loop is the C++ kernels'")
    assert on.runtime["layer_loop"] is True
    python = _engine(model_dir, True, layer_loop=False)
    assert python.runtime["layer_loop"] is False
    prefix = ids(150)
    prompts = [prefix + ids(20), prefix + ids(70), ids(40), ids(5)]
    params = SamplingParams(max_tokens=6, temperature=0.0, top_logprobs=3, ignore_eos=True)

    def outputs(engine):
        engine.reset_prefix_cache()
        run(engine, [prefix + ids(9)])  # fills the cache
        outs: list[list] = [[] for _ in prompts]
        for prompt, out in zip(prompts, outs):
            engine.add_request(prompt, params, out.extend)
        engine.run_until_idle()
        return [[(o.token_id, o.logprobs.logprob, o.logprobs.top, o.cached_tokens) for o in out] for out in outs]

    state = _rng.getstate()
    loop = outputs(on)
    _rng.setstate(state)
    assert outputs(python) == loop
    assert loop[0][0][3] >= 128  # the shared prefix was a hit


def test_torch_fallback_computes_the_same_model(on, model_dir) -> None:
    """Without the C++ kernels (no compiler): the same tokens, cache hits included."""
    fallback = _engine(model_dir, True, native_kernels=False)
    assert fallback.runtime["kernels"] == "torch" and fallback.runtime["matmul"] != "native"
    prefix = ids(200)
    prompts = [prefix + ids(30), prefix + ids(3), ids(9)]
    on.reset_prefix_cache()
    got, cached = run(fallback, prompts)
    assert got == run(on, prompts)[0]
    assert cached == [0, 192, 0]


def _near_tie_head(ops, seed: int, a_row: list[float], b_row: list[float]):
    """A 4099 x 256 head of small random weights with token 1000 a copy of token 7 (an exact tie: 7
    must win) and tokens A and B zero but for `a_row` / `b_row` in their first dimensions; 40 rows:
    row 0 along token 7, row 1 ones over those dimensions (where A and B nearly tie), the rest random."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4099, 256, generator=g) * 0.02
    w[1000] = w[7]
    for token, values in ((A, a_row), (B, b_row)):
        w[token].zero_()
        w[token, :len(values)] = torch.tensor(values)
    rows = torch.randn(40, 256, generator=g)
    rows[0] = w[7] * 50
    rows[1].zero_()
    rows[1, :max(len(a_row), len(b_row))] = 1.0
    return w, ops.pack_linear(w), rows


def _assert_fp32_argmax(head, ops, panels, rows) -> None:
    for batch in rows.split(8):
        assert head.ids(batch) == ops.linear(batch.contiguous(), panels, head.vocab).argmax(dim=1).tolist()


A, B = 2000, 3000  # the near-tie pair of _near_tie_head


def test_greedy_head_is_the_fp32_heads_argmax_and_needs_its_bound() -> None:
    """The bf16-screened greedy head against the fp32 head's argmax: random rows, exact ties (a
    duplicated token: the first wins), and a pair the screen orders the wrong way round (token A is
    larger in fp32, B in bf16): with its error bound the head rechecks both and picks A; with no
    bound it picks B, so this comparison can fail."""
    from skills.hybrid_engine.greedy_head import ERROR, GreedyHead
    from skills.hybrid_engine.kernels import kernels

    ops, name = kernels(True)
    if name != "native" or not ops.greedy_head_available():
        pytest.skip("the greedy head needs the C++ kernels with AVX-512 BF16")
    # A: 1 + 0.45 2^-7 rounds to 1.0 in bf16 (screened 1.0, exact 1.0035); B: exact in bf16, 1.00195
    w, panels, rows = _near_tie_head(ops, 5, [1 + 0.45 * 2 ** -7], [1.0, 2 ** -9])
    head = GreedyHead(panels, w.shape[0], ops)
    _assert_fp32_argmax(head, ops, panels, rows)
    assert head.ids(rows[:2]) == [7, A]
    assert GreedyHead(panels, w.shape[0], ops, error=0.0).ids(rows[1:2]) == [B]  # the screen alone is wrong here
    assert ERROR > 2 ** -8 + 2 ** -18 + 2 * w.shape[1] * 2 ** -24


def test_int8_greedy_head_is_the_fp32_heads_argmax_and_needs_its_bound() -> None:
    """The int8-screened greedy head against the fp32 head's argmax: random rows and their negatives,
    an exact tie (the first wins), an all-zero column, an all-zero row (every logit 0: token 0), a
    row that is not finite (left to the full head), and a pair the int8 screen orders the wrong way
    round (A is larger in fp32: 1.0078 against 1.0045; B in int8, where A's small weights round to 0
    and B's to one step, 1/127): with its bound the head rechecks both and picks A; with the bound
    scaled to 0 it picks B, so this comparison can fail."""
    from skills.hybrid_engine.greedy_head import Int8Head
    from skills.hybrid_engine.kernels import kernels

    ops, name = kernels(True)
    if name != "native" or not getattr(ops, "int8_screen_available", lambda: False)():
        pytest.skip("the int8 screen needs the C++ kernels with AVX-512 VNNI")
    w, _, rows = _near_tie_head(ops, 11, [1.0, 0.0039, 0.0039], [1.0, 0.0045])
    w[50].zero_()
    panels = ops.pack_linear(w)
    head = Int8Head(panels, w.shape[0], ops)
    _assert_fp32_argmax(head, ops, panels, rows)
    _assert_fp32_argmax(head, ops, panels, -rows)
    assert head.ids(rows[:2]) == [7, A]
    assert Int8Head(panels, w.shape[0], ops, bound=0.0).ids(rows[1:2]) == [B]  # the screen alone is wrong here
    assert head.ids(torch.zeros(1, w.shape[1])) == [0]
    broken = rows[:2].clone()
    broken[1, 5] = float("nan")
    assert head.ids(broken) is None


@pytest.mark.parametrize("screen", ["int8", "bf16"])
def test_each_greedy_screen_gives_the_fp32_heads_tokens(screen, model_dir) -> None:
    engine = _engine(model_dir, True, greedy_screen=screen)
    if engine.runtime["greedy_screen"] != screen:
        pytest.skip(f"no {screen} screen on this machine")
    full = _engine(model_dir, True, greedy_head=False)
    assert full.runtime["greedy_screen"] is None
    prompts = [ids(n) for n in (40, 90, 3, 150)]
    assert run(engine, prompts, together=True)[0] == run(full, prompts, together=True)[0]


def test_greedy_head_on_and_off_give_the_same_tokens(on, model_dir) -> None:
    full = _engine(model_dir, True, greedy_head=False)
    assert full.runtime["greedy_head"] is False
    if not on.runtime["greedy_head"]:
        pytest.skip("no greedy head on this machine (no AVX-512 BF16)")
    prompts = [ids(n) for n in (40, 90, 3, 150)]
    assert run(on, prompts, together=True)[0] == run(full, prompts, together=True)[0]


def test_bf16_valued_weights_are_packed_in_bf16_and_give_the_fp32_panels_bits() -> None:
    """A matrix of bf16 values (a bf16 checkpoint served in fp32) is packed in bf16: half the bytes,
    the same products bit for bit as fp32 panels of it, at every row block (1, 2, 4, 8 and mixes),
    for a partial last panel too, and through the greedy head's recheck. A matrix with one weight
    that is no bf16 value stays in fp32."""
    from skills.hybrid_engine.greedy_head import GreedyHead
    from skills.hybrid_engine.kernels import kernels

    ops, name = kernels(True)
    if name != "native":
        pytest.skip("the C++ kernels cannot be built here")
    g = torch.Generator().manual_seed(7)
    n, k = 1000, 256  # 1000 = 31 panels of 32 and 8 columns
    w = (torch.randn(n, k, generator=g) * 0.05).bfloat16().float()
    narrow = ops.pack_linear(w)
    assert narrow.dtype == torch.bfloat16 and narrow.nbytes * 2 == ops.pack_linear(w + 2 ** -20).nbytes
    wide = narrow.float()  # the same numbers as fp32 panels, read by the fp32 path
    assert wide.dtype == torch.float32
    for rows in (1, 2, 3, 7, 8, 13):
        x = torch.randn(rows, k, generator=g)
        got = ops.linear(x, narrow, n)
        assert torch.equal(got, ops.linear(x, wide, n))
        assert torch.allclose(got, x @ w.T, rtol=1e-5, atol=1e-5)  # and it is this matmul, not another
    off = w.clone()
    off[5, 3] += 2 ** -20  # no longer a bf16 value
    assert ops.pack_linear(off).dtype == torch.float32
    if ops.greedy_head_available():
        x = torch.randn(8, k, generator=g)
        assert GreedyHead(narrow, n, ops).ids(x) == GreedyHead(wide, n, ops).ids(x) \
            == ops.linear(x, wide, n).argmax(dim=1).tolist()


def test_the_tiny_model_is_served_from_bf16_panels(on) -> None:
    if on.runtime["kernels"] != "native":
        pytest.skip("the C++ kernels cannot be built here")
    assert on.runtime["weight_dtypes"] == ["bfloat16"]
