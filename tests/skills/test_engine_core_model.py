"""engine_core's model runner against transformers' LlamaForCausalLM on the same weights."""

from __future__ import annotations

import pytest
import torch

from skills.engine_api import SamplingParams
from skills.engine_core.config import ModelConfig
from skills.engine_core.packing import PackedLinear, pack_dtype
from skills.engine_core.runner import ModelRunner
from skills.engine_core.scheduler import ScheduledStep
from skills.engine_core.sequence import Sequence
from skills.engine_core.weights import build_model

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def make_runner(hf, dtype=torch.float32, slots=4, max_len=64) -> ModelRunner:
    cfg = ModelConfig.from_hf(hf.config)
    model = build_model(cfg, dict(hf.state_dict()), dtype)
    return ModelRunner(model, slots, max_len, dtype)


def forward(runner: ModelRunner, step: ScheduledStep) -> torch.Tensor:
    batch, _ = runner.build(step)
    with torch.inference_mode():
        logits = runner.model(batch, runner.pool)
    for seq in step.decodes:
        seq.num_computed += 1
    for seq, n in step.prefills:
        seq.num_computed += n
    return logits.float()


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


def seq_at(slot: int, prompt: list[int]) -> Sequence:
    seq = Sequence(prompt, GREEDY)
    seq.slot = slot
    return seq


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": False},
    {"num_key_value_heads": 4},
    {"num_key_value_heads": 1, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 32}},
    {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
])
def test_prefill_then_decode_matches_transformers(make_llama, overrides) -> None:
    hf = make_llama(1, **overrides)
    runner = make_runner(hf)
    prompt = [5, 17, 33, 8, 91, 4, 60]
    seq = seq_at(0, prompt)
    logits = forward(runner, ScheduledStep([], [(seq, len(prompt))], 1))
    torch.testing.assert_close(logits[0], hf_logits(hf, prompt)[-1], atol=1e-4, rtol=1e-4)
    for token in (11, 42, 7):
        seq.output_ids.append(token)
        logits = forward(runner, ScheduledStep([seq], [], 1))
        torch.testing.assert_close(logits[0], hf_logits(hf, prompt + seq.output_ids)[-1], atol=1e-4, rtol=1e-4)


def test_chunked_prefill_equals_whole_prefill(hf_model) -> None:
    runner = make_runner(hf_model)
    prompt = list(range(3, 23))
    seq = seq_at(0, prompt)
    for start in range(0, 18, 6):
        assert forward(runner, ScheduledStep([], [(seq, 6)], 1)).shape[0] == 0  # no sample mid-prompt
    logits = forward(runner, ScheduledStep([], [(seq, 2)], 1))
    torch.testing.assert_close(logits[0], hf_logits(hf_model, prompt)[-1], atol=1e-4, rtol=1e-4)


def test_batched_decode_equals_one_at_a_time(hf_model) -> None:
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20, 21]]
    batched = make_runner(hf_model)
    seqs = [seq_at(i, p) for i, p in enumerate(prompts)]
    forward(batched, ScheduledStep([], [(s, len(s.prompt_ids)) for s in seqs], 3))
    for s in seqs:
        s.output_ids.append(3)
    together = forward(batched, ScheduledStep(seqs, [], 3))
    for i, p in enumerate(prompts):
        torch.testing.assert_close(together[i], hf_logits(hf_model, p + [3])[-1], atol=1e-4, rtol=1e-4)


def test_mixed_step_with_sparse_decode_slots(hf_model) -> None:
    """Decodes at slots 0 and 2 while slot 1 is still prefilling: queries are scattered to their slots."""
    runner = make_runner(hf_model)
    a, b, c = seq_at(0, [5, 6, 7]), seq_at(1, list(range(30, 40))), seq_at(2, [8, 9])
    forward(runner, ScheduledStep([], [(a, 3), (b, 4), (c, 2)], 3))
    a.output_ids.append(4)
    c.output_ids.append(44)
    logits = forward(runner, ScheduledStep([a, c], [(b, 6)], 3))
    assert logits.shape[0] == 3  # two decodes + b's last prompt chunk
    torch.testing.assert_close(logits[0], hf_logits(hf_model, [5, 6, 7, 4])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], hf_logits(hf_model, [8, 9, 44])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[2], hf_logits(hf_model, list(range(30, 40)))[-1], atol=1e-4, rtol=1e-4)


def test_state_move_keeps_the_sequence(hf_model) -> None:
    runner = make_runner(hf_model)
    seq = seq_at(2, [5, 6, 7, 8])
    forward(runner, ScheduledStep([], [(seq, 4)], 3))
    runner.pool.move(2, 0, seq.num_computed)
    seq.slot = 0
    seq.output_ids.append(9)
    logits = forward(runner, ScheduledStep([seq], [], 1))
    torch.testing.assert_close(logits[0], hf_logits(hf_model, [5, 6, 7, 8, 9])[-1], atol=1e-4, rtol=1e-4)


def test_bfloat16_close_to_float32(hf_model) -> None:
    prompt = [5, 17, 33, 8, 91, 4, 60]
    logits = forward(make_runner(hf_model, torch.bfloat16), ScheduledStep([], [(seq_at(0, prompt), 7)], 1))
    torch.testing.assert_close(logits[0], hf_logits(hf_model, prompt)[-1], atol=0.1, rtol=0.05)


@pytest.mark.parametrize("tied", [True, False])
def test_prepacked_weights_give_the_same_logits(make_llama, tied) -> None:
    hf = make_llama(2, tie_word_embeddings=tied)
    plain, packed = make_runner(hf), make_runner(hf)
    packed.model.pack()
    prompt = [5, 17, 33, 8, 91, 4, 60]
    a = forward(plain, ScheduledStep([], [(seq_at(0, prompt), 7)], 1))
    b = forward(packed, ScheduledStep([], [(seq_at(0, prompt), 7)], 1))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_decode_attention_loops_equal_sdpa() -> None:
    from skills.engine_core.kernels import decode_attention, decode_attention_loops

    torch.manual_seed(0)
    q, k, v = torch.randn(5, 3, 3, 16), torch.randn(5, 3, 12, 16), torch.randn(5, 3, 12, 16)
    lengths = torch.tensor([12, 1, 7, 3, 9])
    mask = torch.zeros(5, 1, 1, 12).masked_fill_(torch.arange(12) >= lengths[:, None, None, None], float("-inf"))
    torch.testing.assert_close(decode_attention_loops(q, k, v, mask), decode_attention(q, k, v, mask),
                               atol=1e-5, rtol=1e-5)


def test_bf16_weights_pack_in_fp32_where_the_cpu_has_no_bf16_dot_product() -> None:
    ice_lake = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"})
    assert pack_dtype(torch.bfloat16, ice_lake) == torch.float32
    assert pack_dtype(torch.float32, ice_lake) == torch.float32
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert pack_dtype(torch.bfloat16, ice_lake | {"avx512_bf16"}) == torch.bfloat16
        assert pack_dtype(torch.bfloat16, ice_lake | {"amx_bf16", "amx_tile"}) == torch.bfloat16
        assert pack_dtype(torch.bfloat16, frozenset()) == torch.bfloat16  # unread flags: oneDNN decides


def test_bf16_weights_stay_bf16_where_an_fp32_copy_would_take_most_of_the_memory() -> None:
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN takes no bf16 on this CPU: fp32 whatever the memory")
    ice_lake = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"})
    eight_b = 8 * 10**9  # weights: 32 GB in fp32
    assert pack_dtype(torch.bfloat16, ice_lake, eight_b, available=128 * 2**30) == torch.float32
    assert pack_dtype(torch.bfloat16, ice_lake, eight_b, available=48 * 2**30) == torch.bfloat16
    assert pack_dtype(torch.float32, ice_lake, eight_b, available=2**30) == torch.float32


def test_a_model_packed_with_little_memory_left_keeps_bf16_weights_and_says_so(make_llama, caplog) -> None:
    if pack_dtype(torch.bfloat16) != torch.float32:
        pytest.skip("this CPU multiplies bf16 in oneDNN: no fp32 copy to decline")
    runner = make_runner(make_llama(2), torch.bfloat16)
    runner.model.pack(available=1024)  # bytes: less than twice the fp32 copy of any model
    assert runner.model.onednn_dtype == "bfloat16"
    assert "an fp32 copy" in caplog.text
    roomy = make_runner(make_llama(2), torch.bfloat16)
    roomy.model.pack(available=2**40)
    assert roomy.model.onednn_dtype == "float32"


def test_bf16_weights_packed_in_fp32_match_a_float64_matmul_within_a_bf16_step() -> None:
    torch.manual_seed(0)
    weight, x = torch.randn(96, 64).bfloat16(), torch.randn(40, 64).bfloat16()
    linear = PackedLinear(weight, None, compute=torch.float32)
    out = linear.onednn(x)
    assert out.dtype == torch.bfloat16
    exact = (x.double() @ weight.double().T).bfloat16()  # bf16 x bf16 products are exact in fp32
    torch.testing.assert_close(out, exact, atol=0, rtol=2 ** -7)


def test_a_packed_model_names_the_dtype_onednn_multiplies_in(make_llama) -> None:
    runner = make_runner(make_llama(2), torch.bfloat16)
    assert runner.model.onednn_dtype is None
    runner.model.pack()
    assert runner.model.onednn_dtype == str(pack_dtype(torch.bfloat16)).removeprefix("torch.")
