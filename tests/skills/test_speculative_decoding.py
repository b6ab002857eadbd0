"""Speculative decoding: the proposers and acceptance (pure), the engine with drafts on a tiny
random Llama (output equal to plain decoding, stop conditions inside an accepted run, usage),
and losslessness on the real SmolLM2 in bf16 (marked slow)."""

from __future__ import annotations

import pytest
import torch

from skills.engine_core.config import ModelConfig
from skills.engine_core.engine import EngineConfig, LLMEngine
from skills.engine_core.kernels import Kernels
from skills.engine_core.row_invariance import flat_in_rows
from skills.engine_core.runner import ModelRunner
from skills.engine_core.weights import build_model
from skills.engine_api import SamplingParams
from skills.speculative_decoding import Drafter, SpecConfig, Speculator, accept_greedy

# --- the drafter and acceptance (the lookup's own cases: test_speculative_proposer.py) ---


def test_drafter_falls_back_to_prompt_lookup_and_counts_prediction_usage() -> None:
    cfg = SpecConfig(num_speculative_tokens=4, key_block=0, adaptive=True)
    prompt = [100, 101, 102, 103, 104, 105]
    d = Drafter(cfg, prompt, prediction=[1, 2, 3, 4, 5, 6, 7])
    draft = d.propose([101, 102], 10)  # not in the prediction: prompt lookup
    assert draft.source == "ngram" and draft.tokens == [103, 104, 105, 101]  # context = prompt + output
    draft = d.propose([101, 102, 1, 2], 10)
    assert draft.source == "prediction" and draft.tokens == [3, 4, 5, 6]
    d.update([101, 102, 1, 2, 3, 4, 9], draft, accepted=2, emitted=3)
    assert (d.accepted_prediction, d.rejected_prediction) == (2, 2)
    assert d.k == 4  # adaptive: shrunk to accepted + 2
    assert Speculator(cfg).start(prompt, SamplingParams(max_tokens=4, temperature=0.7)) is None


def test_auto_k_follows_the_cost_of_the_engines_few_row_matmul() -> None:
    from skills.speculative_decoding.speculator import AUTO_K, AUTO_UNSURE

    spec = Speculator(SpecConfig(num_speculative_tokens=5), auto_k=True)
    assert spec.cfg.num_speculative_tokens == max(AUTO_K.values())  # the rows the engine checks
    spec.matmul_chosen(flat_in_rows("small_gemm", amx=True, small_amx=False))  # small_gemm's AVX-512 loop
    assert spec.cfg.num_speculative_tokens == AUTO_K["growing"] and spec.verify_rows == AUTO_K["growing"] + 1
    assert spec.cfg.unsure_tokens == AUTO_UNSURE["growing"]
    spec.matmul_chosen(flat_in_rows("onednn", amx=True))
    assert spec.cfg.num_speculative_tokens == AUTO_K["flat"] > AUTO_K["growing"]
    assert spec.cfg.unsure_tokens == AUTO_UNSURE["flat"]
    spec.matmul_chosen(flat_in_rows("onednn", amx=False))  # oneDNN without AMX grows with the rows like the others
    assert spec.cfg.num_speculative_tokens == AUTO_K["growing"]
    spec.matmul_chosen(flat_in_rows("small_gemm", amx=True, small_amx=True))  # small_gemm on AMX tiles
    assert spec.cfg.num_speculative_tokens == AUTO_K["flat"]
    fixed = Speculator(SpecConfig(num_speculative_tokens=5))
    fixed.matmul_chosen(True)
    assert fixed.cfg.num_speculative_tokens == 5  # a K that was asked for stays


def test_accept_greedy() -> None:
    assert accept_greedy([5, 6, 7], [5, 6, 9, 1]) == 2
    assert accept_greedy([5, 6, 7], [5, 6, 7, 1]) == 3
    assert accept_greedy([], [4]) == 0


# --- the engine on a tiny random Llama (float32) ---

PROMPTS = [[5, 6, 7, 8, 9, 5, 6, 7], list(range(10, 40)), [20, 21, 22, 20, 21]]


def make_engine(hf, speculator=None, eos=frozenset({2}), **overrides) -> LLMEngine:
    cfg = EngineConfig(**{"max_num_seqs": 3, "max_num_batched_tokens": 64, "max_model_len": 128,
                          "dtype": "float32", **overrides})
    model = build_model(ModelConfig.from_hf(hf.config), dict(hf.state_dict()), torch.float32)
    rows = getattr(speculator, "verify_rows", None) or 0
    runner = ModelRunner(model, cfg.max_num_seqs, cfg.max_model_len, torch.float32,
                         key_block=getattr(speculator, "key_block", 0), query_rows=rows)
    return LLMEngine(runner, None, eos, cfg, speculator)


def generate(engine: LLMEngine, prompts, params_list):
    outs = [[] for _ in prompts]
    for i, p in enumerate(prompts):
        engine.add_request(p, params_list[i], outs[i].extend)
    engine.run_until_idle()
    return outs


def ids(outs) -> list[int | None]:
    return [o.token_id for o in outs]


@pytest.fixture(scope="module")
def llama():
    from tests.skills.conftest import tiny_llama

    return tiny_llama(7, initializer_range=0.3)  # larger weights: varied greedy outputs, not one repeated token


@pytest.fixture(scope="module")
def reference(llama):
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    return [ids(o) for o in generate(make_engine(llama), PROMPTS, [params] * len(PROMPTS))]


@pytest.mark.parametrize("key_block", [512, 0], ids=["fixed-shape", "exact-keys"])
def test_outputs_equal_plain_decoding_with_good_and_garbage_predictions(llama, reference, key_block) -> None:
    spec = Speculator(SpecConfig(num_speculative_tokens=4, key_block=key_block))
    engine = make_engine(llama, spec)
    good = [SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, prediction=tuple(r)) for r in reference]
    outs = generate(engine, PROMPTS, good)
    assert [ids(o) for o in outs] == reference
    usage = [o[-1].prediction for o in outs]
    # Each verify accepts up to 4 drafts + 1 bonus; the first token comes from the prefill.
    assert all(u.accepted >= 30 for u in usage), usage
    m = engine.metrics()
    assert m["spec_accepted_tokens"] >= sum(u.accepted for u in usage) and m["spec_steps"] < 3 * 39
    assert m["generation_tokens_total"] == 120 and m["forward_passes"] < 60
    garbage = [SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, prediction=(90, 91, 92, 93) * 5)
               for _ in PROMPTS]
    outs = generate(engine, PROMPTS, garbage)
    assert [ids(o) for o in outs] == reference
    assert sum(o[-1].prediction.accepted for o in outs) <= 3  # a garbage prediction is (almost) never accepted
    none = [SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)] * len(PROMPTS)
    outs = generate(engine, PROMPTS, none)
    assert [ids(o) for o in outs] == reference and all(o[-1].prediction is None for o in outs)


def test_max_tokens_and_eos_cut_an_accepted_run_exactly(llama, reference) -> None:
    engine = make_engine(llama, Speculator(SpecConfig(num_speculative_tokens=8)))
    full = reference[1]
    params = SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True, prediction=tuple(full))
    [out] = generate(engine, PROMPTS[1:2], [params])
    assert ids(out) == full[:7] and [o.finish_reason for o in out] == [None] * 6 + ["length"]
    # The first token came from the prefill; the verify's draft was cut to 5 so that 5 accepted
    # plus the model's own token make exactly max_tokens.
    assert out[-1].prediction.accepted == 5
    assert engine.metrics()["generation_tokens_total"] == 7
    # EOS inside the run: a token first seen at position k ends the request there, with no token.
    k = next(i for i in range(3, 30) if full[i] not in full[:i])
    engine = make_engine(llama, Speculator(SpecConfig(num_speculative_tokens=8)), eos=frozenset({full[k]}))
    params = SamplingParams(max_tokens=40, temperature=0.0, prediction=tuple(full))
    [out] = generate(engine, PROMPTS[1:2], [params])
    assert ids(out) == full[:k] + [None] and out[-1].finish_reason == "stop"
    assert out[-1].prediction.accepted <= k - 1
    m = engine.metrics()
    assert m["generation_tokens_total"] == k and m["requests_finished"] == 1
    assert m["requests_running"] == 0


def test_requests_finishing_while_others_verify_keep_every_output_equal(llama) -> None:
    """More requests than slots, finishing at different steps while others verify drafts: a
    finishing request moves the last slot's sequence into its slot (scheduler.finish), which must
    copy that sequence's K/V up to what this very step computed. (It copied its count from before
    the step when the sequence's verify came later in the step's results: its new slot then held
    another request's keys at those positions, and on SmolLM2 in setting A, rate=inf, outputs
    wandered off into other prompts' text.)"""
    prompts = [[(7 * i + 3 * j) % 90 + 5 for j in range(6 + i % 5)] for i in range(9)]
    lengths = [9, 23, 14, 31, 6, 27, 18, 11, 25]
    plain = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    reference = [ids(o) for o in generate(make_engine(llama), prompts, plain)]
    engine = make_engine(llama, Speculator(SpecConfig(num_speculative_tokens=4, key_block=0)))
    # Predictions right for a while, then wrong: verify steps accept some drafts and reject others.
    drafted = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True,
                              prediction=tuple(r[: n // 2]) + (90, 91, 92) + tuple(r[n // 2:]))
               for n, r in zip(lengths, reference)]
    outs = generate(engine, prompts, drafted)
    assert [ids(o) for o in outs] == reference
    m = engine.metrics()
    assert m["spec_accepted_tokens"] > 0 and m["spec_steps"] > 0 and m["requests_finished"] == len(prompts)


def test_sampled_requests_do_not_speculate(llama) -> None:
    engine = make_engine(llama, Speculator(SpecConfig(num_speculative_tokens=4)))
    sampled = SamplingParams(max_tokens=10, temperature=0.8, seed=1, ignore_eos=True, prediction=(5, 6, 7))
    [a] = generate(engine, PROMPTS[:1], [sampled])
    [b] = generate(make_engine(llama), PROMPTS[:1], [sampled])
    assert ids(a) == ids(b) and engine.metrics()["spec_steps"] == 0


# --- the real model, bf16 (the numerics the lossless oracle runs on) ---


@pytest.fixture(scope="module")
def real_engine():
    """SmolLM2 with speculation, loaded as engine-b loads it: with the C++ kernels, whose rows
    attend alone (without them, verify steps are padded to a fixed shape, which the load-time
    check finds unequal to one-token decodes, and speculation is off)."""
    from harness.assets import ensure_model
    from skills.engine_core import load_engine

    was_native = Kernels.decoder_layers is not None
    if not Kernels.use_native():
        Kernels.use_native(was_native)
        pytest.skip("the C++ kernels cannot be built here")
    # One thread: libgomp's default spin (GOMP_SPINCOUNT is read at import, too late here) makes
    # 2 threads 5-30x slower on a busy machine (skills/engine_core/NOTE.md).
    threads = torch.get_num_threads()
    try:
        engine = load_engine(ensure_model("smollm2-135m-instruct"),
                             EngineConfig(max_num_seqs=2, max_num_batched_tokens=512, max_model_len=1024, threads=1),
                             Speculator(SpecConfig(num_speculative_tokens=8)))
    finally:
        torch.set_num_threads(threads)
    assert engine.speculator is not None, engine.runtime
    yield engine
    Kernels.use_native(was_native)


def lone_rows_nudged(kernel):
    """`kernel` with its output scaled by 1.01 when the call has one row: a kernel whose numbers
    depend on the step's row count, which the chunking checks below must catch. (Whether oneDNN's
    own bf16 matmul rounds a lone row differently depends on the CPU, so it cannot be the example.)"""
    def nudged(x, *args):
        out = kernel(x, *args)
        return out * 1.01 if x.shape[0] == 1 else out
    return staticmethod(nudged)


def verify_in_chunks(engine, chunks: list[int], rows_alone: bool | None = None) -> torch.Tensor:
    """The logits of 9 code tokens verified after a 20-line prompt, chunk by chunk: each chunk is
    a verify step of `n` rows (the last token plus n - 1 drafts), as the engine schedules them."""
    from skills.engine_core.scheduler import ScheduledStep
    from skills.engine_core.sequence import Sequence
    from skills.speculative_decoding import Draft

    runner = engine.runner
    prompt = engine.tokenizer("def median(data):\n    data = sorted(data)\n" * 20).input_ids
    tokens = engine.tokenizer("    n = len(data)\n    if n == 0:\n        raise ValueError").input_ids[:9]
    seq = Sequence(prompt, SamplingParams(max_tokens=20, temperature=0.0))
    seq.slot = 0
    runner.run(ScheduledStep([], [(seq, len(prompt) - 1)], 1))
    seq.num_computed = len(prompt) - 1
    rows, done = [], 0
    for n in chunks:
        seq.output_ids = tokens[:done]  # last_token: the token before this chunk
        seq.draft = Draft(tokens[done: done + n - 1], "")
        batch, _ = runner.build(ScheduledStep([], [], 1, [seq]))
        if rows_alone is not None:
            # Rows attending alone need no span, mask or padded batch: only (slots, positions).
            assert batch.rows_alone == rows_alone
            assert (batch.prefills == () and batch.decode is None) if rows_alone else len(batch.prefills) == 1
        rows.append(runner.model(batch, runner.pool))
        seq.num_computed += n
        done += n
    return torch.cat(rows)


@pytest.fixture
def eager_kernels():
    """The torch kernels (no skills/cpu_kernels) for one test, whatever the tests before it left."""
    from skills.engine_core.kernels import Kernels

    was_native = Kernels.decoder_layers is not None
    Kernels.use_native(False)
    yield Kernels
    Kernels.use_native(was_native)


@pytest.mark.slow
def test_real_model_rows_are_invariant_to_the_chunking(real_engine, eager_kernels, monkeypatch) -> None:
    """The lossless contract under bf16 without the native kernels: a token's logits are
    bit-identical whether it is verified in a short chunk or a long one (queries padded to K + 1
    rows, keys in whole 512-blocks). With exact keys, 1-row steps and a kernel that treats a lone
    row differently, the same check sees the difference."""
    runner = real_engine.runner
    assert runner.key_block and runner.query_rows  # the fixed shape is the engine's default here
    whole = verify_in_chunks(real_engine, [9], rows_alone=False)
    same = [torch.equal(verify_in_chunks(real_engine, chunks), whole) for chunks in ([2, 2, 2, 3], [3, 6], [4, 2, 3])]
    assert all(same), same

    monkeypatch.setattr(runner, "key_block", 0)
    monkeypatch.setattr(runner, "query_rows", 0)
    monkeypatch.setattr(eager_kernels, "silu_mul", lone_rows_nudged(eager_kernels.silu_mul))
    whole = verify_in_chunks(real_engine, [9])
    assert not torch.equal(verify_in_chunks(real_engine, [1] * 9), whole)


@pytest.mark.slow
def test_real_model_rows_attending_alone_need_no_padding(real_engine, monkeypatch) -> None:
    """With the native row attention (skills/cpu_kernels) a verify chunk of any length gives a
    token bit-identical logits, with no padded queries and no key blocks: any length >= 2 with
    oneDNN's matmuls, any length at all with small_gemm's. A matmul that rounds a lone row
    differently is caught by the same comparison."""
    from skills.engine_core.kernels import Kernels

    was_native = Kernels.decoder_layers is not None
    if not Kernels.use_native():
        pytest.skip("the C++ kernels cannot be built here")
    runner = real_engine.runner
    monkeypatch.setattr(runner, "key_block", 0)
    monkeypatch.setattr(runner, "query_rows", 0)
    splits = ([1] * 9, [2, 2, 2, 3], [3, 6], [4, 2, 3], [2, 7], [1, 8])
    try:
        small = Kernels.small_gemm
        if small is not None:  # AVX-512 BF16: small_gemm for every matmul, any row count
            assert runner.model.has_small_matmuls
            whole = verify_in_chunks(real_engine, [9], rows_alone=True)
            same = [torch.equal(verify_in_chunks(real_engine, chunks, rows_alone=True), whole) for chunks in splits]
            assert all(same), same
            monkeypatch.setattr(Kernels, "small_gemm", lone_rows_nudged(small))  # the lm_head runs through it
            whole = verify_in_chunks(real_engine, [9])
            assert not torch.equal(verify_in_chunks(real_engine, [1] * 9), whole)
        monkeypatch.setattr(Kernels, "small_gemm", None)  # oneDNN for the matmuls: the engine keeps >= 2 rows
        whole = verify_in_chunks(real_engine, [9])
        same = [torch.equal(verify_in_chunks(real_engine, chunks), whole) for chunks in ([2, 2, 2, 3], [3, 6], [2, 7])]
        assert all(same), same
    finally:
        monkeypatch.undo()
        Kernels.use_native(was_native)


@pytest.mark.slow
@pytest.mark.parametrize("few_row_matmul, native", [("auto", True), ("onednn", True), ("auto", False)],
                         ids=["auto", "onednn", "auto-without-cpp-kernels"])
def test_real_model_as_engine_b_loads_it_is_lossless_on_this_cpu(few_row_matmul, native, request) -> None:
    """Whatever matmul the loader keeps on this CPU (engine-b's `auto`, or oneDNN where asked for
    and its verify steps pass the load-time check), with the C++ kernels as engine-b starts by
    default and without them (a machine without a compiler): every chunking of a verify gives
    bit-identical logits, and replies to bug-fix items with their prediction equal those of an
    engine without speculation (engine-b --no-spec). This is the claim setting B's oracle checks;
    on a CPU where it breaks, this test fails."""
    from harness.assets import ensure_model
    from skills.engine_core import load_engine
    from skills.speculative_decoding.bench import PROMPT, buggy_items

    threads = torch.get_num_threads()
    model_dir = ensure_model("smollm2-135m-instruct")
    cfg = EngineConfig(max_num_seqs=1, max_num_batched_tokens=1024, max_model_len=1024, threads=1,
                       few_row_matmul=few_row_matmul)
    was_native = Kernels.decoder_layers is not None
    request.addfinalizer(lambda: Kernels.use_native(was_native))  # the kernels are global: restored after
    if Kernels.use_native(native) != native:
        pytest.skip("the C++ kernels cannot be built here")
    try:
        engine = load_engine(model_dir, cfg, Speculator(SpecConfig(num_speculative_tokens=8), auto_k=True))
        plain = load_engine(model_dir, cfg)
    finally:
        torch.set_num_threads(threads)
    runtime = engine.runtime
    if engine.speculator is None:  # the check failed: plain decoding, and the runtime says why
        assert runtime["speculation"] is False and not runtime["verify_check"]["ok"], runtime
    elif Kernels.rows_alone(torch.bfloat16):  # rows attend alone: any chunking, 1-row steps included
        assert runtime["verify_check"]["ok"] and engine.runner.row_count_invariant()
        whole = verify_in_chunks(engine, [9])
        for chunks in ([1] * 9, [2, 2, 2, 3], [4, 5], [1, 8], [3, 1, 5]):
            assert torch.equal(verify_in_chunks(engine, chunks), whole), (chunks, runtime)
    tok = engine.tokenizer
    accepted = 0
    for _, _, bug in sorted(buggy_items(20), key=lambda item: len(item[2]))[2:5]:  # not the ones tested below
        prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT.format(code=bug)}],
                                         add_generation_prompt=True, tokenize=True, return_dict=False)
        pred = tuple(tok(bug, add_special_tokens=False).input_ids)
        [spec] = generate(engine, [list(prompt)], [SamplingParams(max_tokens=48, temperature=0.0, prediction=pred)])
        [base] = generate(plain, [list(prompt)], [SamplingParams(max_tokens=48, temperature=0.0)])
        assert ids(spec) == ids(base), runtime
        accepted += spec[-1].prediction.accepted if spec[-1].prediction else 0
    assert accepted > 0 or engine.speculator is None


@pytest.mark.slow
def test_real_model_output_with_prediction_equals_without(real_engine) -> None:
    engine = real_engine
    from skills.speculative_decoding.bench import PROMPT, buggy_items

    tok = engine.tokenizer
    shortest = sorted(buggy_items(20), key=lambda item: len(item[2]))[:2]  # the prefill is most of the time
    for _, _, bug in shortest:
        prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT.format(code=bug)}],
                                         add_generation_prompt=True, tokenize=True, return_dict=False)
        runs = {}
        for name, pred in (("none", None), ("good", bug), ("garbage", "x = 1\n" * 20)):
            params = SamplingParams(max_tokens=32, temperature=0.0,
                                    prediction=None if pred is None else tuple(tok(pred, add_special_tokens=False).input_ids))
            [out] = generate(engine, [list(prompt)], [params])
            runs[name] = out
        assert ids(runs["good"]) == ids(runs["none"]) == ids(runs["garbage"])
        assert runs["good"][-1].prediction.accepted > 0
    assert engine.metrics()["spec_prediction_accepted_tokens"] > 0
