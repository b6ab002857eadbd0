"""skills/cpu_kernels: the fused C++ kernels equal the eager torch code they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skills.cpu_kernels import native
from skills.engine_core import kernels as eager
from skills.engine_core.kernels import Kernels

ext = native()
pytestmark = pytest.mark.skipif(ext is None, reason="the C++ kernels cannot be built here (no compiler)")
BF16 = torch.bfloat16


@pytest.fixture
def native_kernels():
    assert Kernels.use_native()
    yield
    Kernels.use_native(False)


@pytest.mark.parametrize("rows", [1, 5, 24])
def test_elementwise_kernels_are_bit_exact(rows) -> None:
    torch.manual_seed(rows)
    x, res = torch.randn(rows, 96, dtype=BF16), torch.randn(rows, 96, dtype=BF16)
    w = (1 + 0.2 * torch.randn(96)).to(BF16)
    assert torch.equal(ext.rms_norm(x, w, 1e-5), eager.rms_norm(x, w, 1e-5))
    for got, want in zip(ext.add_rms_norm(x, res, w, 1e-6), eager.add_rms_norm(x, res, w, 1e-6)):
        assert torch.equal(got, want)
    gate_up = torch.randn(rows, 2 * 80, dtype=BF16) * 4
    assert torch.equal(ext.silu_mul(gate_up, 80), eager.silu_mul(gate_up, 80))
    qkv = torch.randn(rows, 8 * 16 + 16, dtype=BF16)
    heads = qkv[:, : 8 * 16].view(rows, 8, 16)  # a strided view, as attention passes it
    cos, sin = torch.randn(rows, 1, 16, dtype=BF16), torch.randn(rows, 1, 16, dtype=BF16)
    assert torch.equal(ext.rope(heads, cos, sin), eager.rope(heads, cos, sin, 8))


def test_decode_attention_matches_float32_sdpa() -> None:
    torch.manual_seed(0)
    slots, kv_heads, group, dim, keys = 6, 3, 3, 64, 40
    q = torch.randn(slots, kv_heads, group, dim, dtype=BF16)
    cache_k = torch.randn(8, kv_heads, 128, dim, dtype=BF16)
    cache_v = torch.randn(8, kv_heads, 128, dim, dtype=BF16)
    k, v = cache_k[:slots, :, :keys], cache_v[:slots, :, :keys]  # views of the slot cache
    lengths = torch.tensor([40, 1, 17, 3, 39, 25])
    keep = torch.arange(keys) < lengths[:, None]
    mask = torch.zeros(slots, 1, 1, keys, dtype=BF16).masked_fill_(~keep[:, None, None, :], float("-inf"))
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float())
    got = ext.decode_attention(q, k, v, mask)
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)
    # a slot attends to its own keys only: changing a masked key changes nothing
    cache_k[1, :, 5:keys] = 100
    assert torch.equal(ext.decode_attention(q, cache_k[:slots, :, :keys], v, mask)[1], got[1])


def test_row_attention_matches_float32_and_each_row_is_computed_alone() -> None:
    """Each row attends its own slot's keys 0..position; its result is bit-identical whatever rows
    it is batched with (the basis of lossless speculation without padding)."""
    torch.manual_seed(1)
    kv_heads, group, dim = 3, 3, 64
    cache_k = torch.randn(3, kv_heads, 700, dim, dtype=BF16)
    cache_v = torch.randn(3, kv_heads, 700, dim, dtype=BF16)
    # a verify chunk of 9 rows on slot 0 (positions 500..508), two decodes on slots 1 and 2
    slots = torch.tensor([0] * 9 + [1, 2])
    positions = torch.tensor(list(range(500, 509)) + [37, 0])
    q = torch.randn(11, kv_heads, group, dim, dtype=BF16)
    got = ext.row_attention(q, cache_k, cache_v, slots, positions)
    want = eager.row_attention(q, cache_k, cache_v, slots, positions)  # fp32 SDPA, one row at a time
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    for r in range(11):  # alone, and as the second row of a different pair
        alone = ext.row_attention(q[r: r + 1], cache_k, cache_v, slots[r: r + 1], positions[r: r + 1])
        pair = ext.row_attention(q[[0, r]], cache_k, cache_v, slots[[0, r]], positions[[0, r]])
        assert torch.equal(alone[0], got[r]) and torch.equal(pair[1], got[r]), r
    # keys past a row's position are not read
    cache_k[0, :, 509:] = 100
    assert torch.equal(ext.row_attention(q, cache_k, cache_v, slots, positions), got)
    # and the keys it does read matter (the check above could not pass by ignoring keys)
    cache_k[0, :, 200] = 50
    assert not torch.equal(ext.row_attention(q, cache_k, cache_v, slots, positions)[:9], got[:9])
    with pytest.raises(RuntimeError, match="out of range"):
        ext.row_attention(q[:1], cache_k, cache_v, slots[:1], torch.tensor([700]))


def test_row_attention_of_a_prompt_chunk_equals_each_row_alone() -> None:
    """A prompt chunk's rows read 1..n keys, so the threads split its tasks by keys, not by count:
    every row is still computed once, by the same code as alone."""
    torch.manual_seed(2)
    kv_heads, group, dim, n = 3, 3, 64, 200
    cache_k = torch.randn(2, kv_heads, 256, dim, dtype=BF16)
    cache_v = torch.randn(2, kv_heads, 256, dim, dtype=BF16)
    slots, positions = torch.ones(n, dtype=torch.long), torch.arange(n)
    q = torch.randn(n, kv_heads, group, dim, dtype=BF16)
    got = ext.row_attention(q, cache_k, cache_v, slots, positions)
    want = eager.row_attention(q, cache_k, cache_v, slots, positions)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    for r in range(n):
        assert torch.equal(ext.row_attention(q[r: r + 1], cache_k, cache_v, slots[:1], positions[r: r + 1])[0], got[r]), r


# (slot, position) per row: two decodes and a verify chunk; one decode; 36 rows, past small_gemm's 32
# (the loop then calls each kernel in its own parallel region, oneDNN for the matmuls).
LOOP_BATCHES = {
    "decodes+verify": [(0, 10), (1, 0), (2, 20), (2, 21), (2, 22), (2, 23)],
    "one-decode": [(1, 37)],
    "one-long-decode": [(0, 61)],
    "36-row-chunk": [(0, 5)] + [(2, 20 + i) for i in range(35)],
}


def _forward(model, where: list[tuple[int, int]], loop: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits and K/V of one step over rows at (slot, position) `where`, on K/V seeded alike, through
    decoder.cpp's loop or the Python layers."""
    from skills.engine_core.batch import ForwardBatch
    from skills.engine_core.state import StatePool

    torch.manual_seed(0)
    pool = StatePool(model.state_specs(), 3, 64, BF16)
    for state in pool.layers:
        state.k.normal_(), state.v.normal_()
    batch = ForwardBatch(input_ids=torch.tensor([(3 + 7 * i) % model.cfg.vocab_size for i in range(len(where))]),
                         positions=torch.tensor([p for _, p in where]),
                         slots=torch.tensor([s for s, _ in where]), num_decodes=len(where), decode=None,
                         prefills=(), sample_rows=torch.arange(len(where)), rows_alone=True)
    saved = Kernels.decoder_layers
    Kernels.decoder_layers = saved if loop else None
    try:
        with torch.inference_mode():
            logits = model(batch, pool)
    finally:
        Kernels.decoder_layers = saved
    return logits, [t for state in pool.layers for t in (state.k, state.v)]


@pytest.mark.parametrize("rows", list(LOOP_BATCHES))
def test_cpp_layer_loop_equals_the_python_layers(make_llama, native_kernels, rows) -> None:
    """decoder.cpp runs the same kernels on the same rows as the Python layers: bit-identical logits
    and K/V, whether its few-row steps split them between threads in one parallel region or not
    (rows attending alone need no spans, as the runner builds them)."""
    from skills.engine_core.config import ModelConfig
    from skills.engine_core.weights import build_model

    hf = make_llama(3, hidden_size=192, num_attention_heads=6, num_key_value_heads=2, head_dim=64)  # group 3, dim 64
    model = build_model(ModelConfig.from_hf(hf.config), dict(hf.state_dict()), BF16)
    model.pack()
    assert model._loop_weights is not None

    def run(loop) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _forward(model, LOOP_BATCHES[rows], loop)

    (cpp, cpp_kv), (py, py_kv) = run(True), run(False)
    assert torch.equal(cpp, py)
    assert all(torch.equal(a, b) for a, b in zip(cpp_kv, py_kv))
    if len(cpp) > 1:
        assert not torch.equal(cpp[0], cpp[-1])  # distinct rows: the comparison is not of constants


@pytest.fixture
def small_gemm_avx512():
    """small_gemm's AVX-512 loop, not its AMX tiles: on AMX oneDNN's tile kernel gave small_gemm's bits."""
    was = ext.small_gemm_amx()
    ext.small_gemm_use_amx(False)
    yield
    ext.small_gemm_use_amx(was)


@pytest.mark.parametrize("loop", [True, False], ids=["cpp-loop", "python-layers"])
def test_steps_past_the_small_gemm_row_cap_take_onednn(make_llama, native_kernels, small_gemm_avx512, loop) -> None:
    """limit_small_gemm_rows(2): a 1-row step still runs small_gemm, a 6-row step runs oneDNN: its
    logits and K/V are those of the same model with oneDNN as the few-row matmul, and not small_gemm's
    (its AVX-512 loop, the one the cap is for)."""
    from skills.engine_core.config import ModelConfig
    from skills.engine_core.weights import build_model

    hf = make_llama(3, hidden_size=192, num_attention_heads=6, num_key_value_heads=2, head_dim=64)
    model = build_model(ModelConfig.from_hf(hf.config), dict(hf.state_dict()), BF16)
    model.pack()
    if not model.has_small_matmuls:
        pytest.skip("small_gemm needs AVX-512")
    few, six = LOOP_BATCHES["one-decode"], LOOP_BATCHES["decodes+verify"]
    small = {n: _forward(model, where, loop) for n, where in (("few", few), ("six", six))}
    model.use_few_row_matmul("onednn")
    onednn = {n: _forward(model, where, loop) for n, where in (("few", few), ("six", six))}
    model.use_few_row_matmul("small_gemm")
    model.limit_small_gemm_rows(2)
    capped = {n: _forward(model, where, loop) for n, where in (("few", few), ("six", six))}

    def same(a, b) -> bool:
        return torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))

    if same(small["six"], onednn["six"]):  # then the checks below could not fail
        pytest.skip("small_gemm and oneDNN give the same bits here (no AVX-512 BF16: both sum fp32 products in "
                    "k order): the cap cannot be seen in the output")
    assert same(capped["six"], onednn["six"])
    assert same(capped["few"], small["few"])


def test_float32_stays_on_the_eager_path(native_kernels) -> None:
    x, w = torch.randn(3, 32), torch.rand(32) + 0.5
    assert torch.equal(Kernels.rms_norm(x, w, 1e-5), eager.rms_norm(x, w, 1e-5))


def test_engine_decodes_the_same_tokens_with_native_kernels(hf_model) -> None:
    """Continuous batching in bf16 (decode attention over sparse slots included): the fused kernels
    pick the same greedy tokens as the eager ones."""
    from skills.engine_core.config import ModelConfig
    from skills.engine_core.engine import EngineConfig, LLMEngine
    from skills.engine_core.runner import ModelRunner
    from skills.engine_core.weights import build_model
    from skills.engine_api import SamplingParams

    prompts = [[5, 6, 7], list(range(10, 40)), [20, 21], list(range(50, 61)), [8]]

    def generate() -> list[list[int]]:
        cfg = EngineConfig(max_num_seqs=3, max_num_batched_tokens=8, max_model_len=128, dtype="bfloat16")
        model = build_model(ModelConfig.from_hf(hf_model.config), dict(hf_model.state_dict()), BF16)
        engine = LLMEngine(ModelRunner(model, 3, 128, BF16), None, frozenset({2}), cfg)
        outs: list[list] = [[] for _ in prompts]
        for prompt, out in zip(prompts, outs):
            engine.add_request(prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True), out.extend)
        engine.run_until_idle()
        return [[o.token_id for o in out] for out in outs]

    plain = generate()
    assert Kernels.use_native()
    try:
        fused = generate()
    finally:
        Kernels.use_native(False)
    assert fused == plain


@pytest.mark.parametrize("rows", [1, 9, 16])
@pytest.mark.parametrize("out_features", [48, 45])  # whole 16-column tiles; a partial last tile
def test_small_gemm_is_its_fp32_sums_rounded_once(rows, out_features) -> None:
    """Each output is the fp32 sum of its products rounded to bf16, whether it is stored 16 at a
    time (whole tiles) or one by one (the last, partial tile): within half a bf16 step of exact."""
    if not ext.small_gemm_available():
        pytest.skip("small_gemm needs AVX-512, which this CPU lacks")
    torch.manual_seed(rows + out_features)
    x, w = torch.randn(rows, 64, dtype=BF16), torch.randn(out_features, 64, dtype=BF16)
    got = ext.small_gemm(x, ext.small_gemm_pack(w), out_features)
    want = x.double() @ w.double().T
    assert got.shape == (rows, out_features)
    assert ((got.double() - want).abs() <= want.abs() * 2 ** -8 + 1e-4).all()


@pytest.mark.parametrize("rows", [1, 9])
def test_small_gemm_rounds_whole_tiles_as_bf16_float_does(rows) -> None:
    """Whole 16-column tiles are rounded to bf16 in vectors (the BF16 instruction, or integer
    instructions without it), a partial last tile one value at a time by bf16(float): the same fp32
    sums must give the same bits either way. Columns 32-44 are a whole tile's in a 48-column weight
    and the partial tile's in its first 45 rows."""
    if not ext.small_gemm_available():
        pytest.skip("small_gemm needs AVX-512, which this CPU lacks")
    torch.manual_seed(rows)
    x, w = torch.randn(rows, 96, dtype=BF16), torch.randn(48, 96, dtype=BF16)
    whole = ext.small_gemm(x, ext.small_gemm_pack(w), 48)
    partial = ext.small_gemm(x, ext.small_gemm_pack(w[:45].contiguous()), 45)
    assert torch.equal(whole[:, :45], partial)
