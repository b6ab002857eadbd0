"""Micro-benchmarks of the skills, as pytest-benchmark tests: a cpu_kernels kernel against its
torch equivalent, one engine_core decode step, and one speculative_decoding verify step, each on
SmolLM2-135M's shapes or weights. Every benchmark also asserts that what it timed is correct.

    pytest tests/skills/test_benchmarks.py --benchmark-only            # the table, more rounds
    pytest tests/skills/test_benchmarks.py --benchmark-json out.json   # stats and extra_info

In the plain test run each benchmark times a few rounds only (QUICK), so the module stays fast;
with --benchmark-only it times more (THOROUGH).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
import torch
import torch.nn.functional as F

from skills.engine_core import kernels as eager
from skills.engine_core.engine import EngineConfig, LLMEngine
from skills.engine_core.kernels import Kernels
from skills.engine_core.packing import SMALL_ROWS
from skills.engine_api import SamplingParams, TokenOutput

if TYPE_CHECKING:
    from _pytest.mark.structures import ParameterSet
    from pytest_benchmark.fixture import BenchmarkFixture

    from skills.speculative_decoding import Speculator

BF16 = torch.bfloat16
# One thread, as the other real-model tests here: on a busy machine libgomp's spinning makes two
# threads far slower than one (skills/engine_core/NOTE.md). Recorded in every extra_info.
THREADS = 1
HIDDEN, INTERMEDIATE, RMS_EPS = 576, 1536, 1e-5  # SmolLM2-135M
PROMPT = "Write a short story about a robot who learns to paint."
K = 8  # draft tokens per verify step (engine-b drafts up to 8-12)
WARMUP = 1  # warm-up rounds before the timed ones


@dataclass(frozen=True)
class Rounds:
    kernel: int  # timed rounds of a kernel, KERNEL_CALLS calls each
    step: int  # timed engine steps, one per round


QUICK = Rounds(kernel=20, step=5)  # the plain test run
THOROUGH = Rounds(kernel=200, step=30)  # --benchmark-only: steadier numbers
KERNEL_CALLS = 20  # a kernel takes microseconds: time it in loops of this many calls


@pytest.fixture(scope="module")
def rounds(pytestconfig) -> Rounds:
    return THOROUGH if pytestconfig.getoption("benchmark_only") else QUICK


@pytest.fixture(scope="module", autouse=True)
def threads() -> Iterator[int]:
    saved = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(saved)


def median_s(benchmark: BenchmarkFixture) -> float | None:
    """The median seconds per call of what was timed (per iteration); None where benchmarks are disabled."""
    return benchmark.stats.stats.median if benchmark.stats else None


class Counted:
    """A callable that counts its calls: pytest-benchmark calls it WARMUP + rounds times, or once
    with --benchmark-disable, and the checks afterwards need to know which."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self) -> None:
        self.fn()
        self.calls += 1


# --- (a) kernels: skills/cpu_kernels against torch ---


def native_ext() -> ModuleType:
    from skills.cpu_kernels import native

    ext = native()
    if ext is None:
        pytest.skip("the C++ kernels are not available here (no compiler, or SERVEBENCH_NO_NATIVE_KERNELS is set)")
    return ext


def rms_norm_impl(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "cpu_kernels":
        ext = native_ext()
        return lambda x, w: ext.rms_norm(x, w, RMS_EPS)
    return lambda x, w: eager.rms_norm(x, w, RMS_EPS)


@pytest.mark.benchmark(group="kernel: rms_norm, 1 row")
@pytest.mark.parametrize("impl", ["cpu_kernels", "torch"])
def test_rms_norm(benchmark, rounds, impl) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, HIDDEN, dtype=BF16)
    w = (1 + 0.2 * torch.randn(HIDDEN)).to(BF16)
    fn = rms_norm_impl(impl)
    got = benchmark.pedantic(fn, (x, w), rounds=rounds.kernel, iterations=KERNEL_CALLS, warmup_rounds=WARMUP)
    if impl == "cpu_kernels":  # the fused kernel rounds where the eager code does: bit-exact
        assert torch.equal(got, eager.rms_norm(x, w, RMS_EPS))
    want = w.double() * x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + RMS_EPS)
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=1e-2)
    benchmark.extra_info.update(rows=1, hidden=HIDDEN, threads=THREADS)


def matmul_impl(name: str, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """y = x W^T: skills/cpu_kernels' small_gemm, torch's F.linear, or the engine's prepacked oneDNN."""
    if name == "cpu_kernels":
        ext = native_ext()
        if not ext.small_gemm_available():
            pytest.skip("small_gemm needs AVX-512, which this CPU lacks")
        packed = ext.small_gemm_pack(weight)
        return lambda x: ext.small_gemm(x, packed, weight.shape[0])
    if name == "onednn_packed":
        from skills.engine_core.packing import PackedLinear, can_pack

        if not can_pack(weight.dtype):
            pytest.skip("torch here has no oneDNN (mkldnn) to prepack for")
        return PackedLinear(weight, None).onednn
    return lambda x: F.linear(x, weight)


def few_rows(rows: int) -> ParameterSet:
    label = "1 row (a decode)" if rows == 1 else f"{rows} rows (a verify of K={rows - 1})"
    return pytest.param(rows, marks=pytest.mark.benchmark(group=f"kernel: few-row matmul, {label}"))


@pytest.mark.parametrize("rows", [few_rows(1), few_rows(K + 1)])
@pytest.mark.parametrize("impl", ["cpu_kernels", "torch", "onednn_packed"])
def test_few_row_matmul(benchmark, rounds, impl, rows) -> None:
    """SmolLM2-135M's gate_up projection ([2 x 1536, 576]), the largest matmul of a layer. Its 3.5 MB
    stay in the CPU's caches from call to call: weight_gb_per_s here is cache bandwidth, not memory's."""
    torch.manual_seed(1)
    weight = (0.05 * torch.randn(2 * INTERMEDIATE, HIDDEN)).to(BF16)
    x = torch.randn(rows, HIDDEN, dtype=BF16)
    fn = matmul_impl(impl, weight)
    got = benchmark.pedantic(fn, (x,), rounds=rounds.kernel, iterations=KERNEL_CALLS, warmup_rounds=WARMUP)
    want = x.float() @ weight.float().T  # bf16 products are exact in fp32: only the sums' order and one rounding differ
    torch.testing.assert_close(got.float(), want, rtol=1.6e-2, atol=1e-2)
    weight_bytes = weight.numel() * weight.element_size()
    benchmark.extra_info.update(rows=rows, out_features=weight.shape[0], in_features=HIDDEN,
                                weight_bytes=weight_bytes, threads=THREADS)
    seconds = median_s(benchmark)
    if seconds:
        benchmark.extra_info["weight_gb_per_s"] = round(weight_bytes / seconds / 1e9, 2)


# --- the real model: engines loaded as the stacks load them ---


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from harness.assets import ensure_model

    return ensure_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def native_kernels() -> Iterator[bool]:
    """The engines use skills/cpu_kernels where they build (engine-a's and engine-b's default);
    yields whether they do. Kernels is global: restored after the module."""
    was_native = Kernels.decoder_layers is not None
    native = Kernels.use_native()
    yield native
    Kernels.use_native(was_native)


def load(model_dir: Path, max_num_seqs: int, speculator: Speculator | None = None,
         max_num_batched_tokens: int = 256) -> LLMEngine:
    from skills.engine_core import load_engine

    cfg = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, max_model_len=1024,
                       threads=THREADS)
    return load_engine(model_dir, cfg, speculator)


@pytest.fixture(scope="module")
def decode_engine(smollm2, native_kernels) -> LLMEngine:
    """Steps of at most SMALL_ROWS rows, prompt chunks included: every matmul is small_gemm, whose rows
    do not depend on the step's, so a prompt's K/V are the same prefilled alone or beside 15 others.
    (A step of more rows takes oneDNN, which rounds a few outputs in 10^4 differently: on an Intel
    Xeon with AMX that changed the tokens of PROMPT prefilled 16 at a time in one 208-row chunk.)"""
    return load(smollm2, max_num_seqs=16, max_num_batched_tokens=SMALL_ROWS)


@pytest.fixture(scope="module")
def spec_engine(smollm2, native_kernels) -> LLMEngine:
    """Drafts from the request's prediction only (no prompt lookup), at full length K from the
    first step: a prediction that is the model's own greedy output is then accepted K at a time."""
    from skills.speculative_decoding import SpecConfig, Speculator

    engine = load(smollm2, max_num_seqs=1, speculator=Speculator(SpecConfig(num_speculative_tokens=K, ngram=False,
                                                                            unsure_tokens=())))
    if engine.speculator is None:
        pytest.skip(f"the loader turned speculation off here: {engine.runtime['verify_check']['detail']}")
    return engine


def token_ids(outs: list[TokenOutput]) -> list[int]:
    return [o.token_id for o in outs if o.token_id is not None]


def start(engine: LLMEngine, batch: int, max_tokens: int, prediction: tuple[int, ...] | None = None
          ) -> list[list[TokenOutput]]:
    """`batch` greedy requests of PROMPT, run until every prompt is prefilled: the next steps
    decode (or verify) only. Returns each request's outputs so far (one token each)."""
    prompt = engine.tokenizer(PROMPT).input_ids
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, prediction=prediction)
    outs: list[list[TokenOutput]] = [[] for _ in range(batch)]
    for out in outs:
        engine.add_request(prompt, params, out.extend)
    while not engine.scheduler.slots or any(s.prefilling for s in engine.scheduler.slots):
        engine.step()
    return outs


def greedy(engine: LLMEngine, max_tokens: int) -> list[int]:
    """PROMPT's greedy tokens by plain one-token decode steps (no prediction: no drafts)."""
    [out] = start(engine, 1, max_tokens)
    engine.run_until_idle()
    return token_ids(out)


def counters_delta(engine: LLMEngine, before: dict[str, int]) -> dict[str, int]:
    after = engine.counters.snapshot()
    return {name: after[name] - before[name] for name in before}


def engine_info(engine: LLMEngine) -> dict[str, object]:
    return {"threads": THREADS, "dtype": engine.cfg.dtype, "few_row_matmul": engine.runtime["few_row_matmul"],
            "kernels": "cpu_kernels" if Kernels.rows_alone(BF16) else "torch",
            "weight_bytes": engine.runner.model.weight_bytes}


def step_engine(benchmark: BenchmarkFixture, engine: LLMEngine, rounds: int) -> tuple[int, dict[str, int]]:
    """Time engine.step(); returns how many steps ran and what the counters moved by."""
    step = Counted(engine.step)
    before = engine.counters.snapshot()
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=WARMUP)
    return step.calls, counters_delta(engine, before)


def decode_batch(batch: int) -> ParameterSet:
    return pytest.param(batch, marks=pytest.mark.benchmark(group=f"engine: decode step, batch {batch}"))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [decode_batch(1), decode_batch(16)])
def test_decode_step(benchmark, rounds, decode_engine, batch) -> None:
    """One engine_core step with `batch` sequences decoding (no prompt chunk in it)."""
    engine = decode_engine
    # Never finishes inside a timed step: the first requests decode while the last are prefilled,
    # at least one prompt a step (SMALL_ROWS - batch rows are left for prompt chunks).
    max_tokens = WARMUP + rounds.step + 2 + batch
    reference = greedy(engine, max_tokens)
    outs = start(engine, batch, max_tokens)
    steps, moved = step_engine(benchmark, engine, rounds.step)
    assert moved["forward_passes"] == steps and moved["decode_tokens_total"] == batch * steps
    assert moved["prefill_tokens_total"] == 0
    engine.run_until_idle()
    tokens = [token_ids(out) for out in outs]
    assert all(len(t) == max_tokens for t in tokens)
    if Kernels.rows_alone(BF16) or batch == 1:
        # Rows computed alone (skills/cpu_kernels): each row's tokens are its batch-1 tokens.
        # (Without them a batched matmul may round a row differently, so only counts are checked.)
        assert tokens == [reference] * batch
    benchmark.extra_info.update(engine_info(engine), batch=batch)
    seconds = median_s(benchmark)
    if seconds:
        benchmark.extra_info.update(
            step_ms=round(seconds * 1e3, 2), tokens_per_s=round(batch / seconds, 1),
            # Every step reads all the weights once: gpt-fast's "bandwidth achieved" (K/V reads left out).
            weight_gb_per_s=round(engine.runner.model.weight_bytes / seconds / 1e9, 2))


@pytest.mark.slow
@pytest.mark.benchmark(group=f"speculation: verify step, K={K}")
def test_verify_step(benchmark, rounds, spec_engine) -> None:
    """One engine step of a request whose prediction is the model's own greedy output: K drafted
    tokens verified in one forward of K + 1 rows, all accepted, plus the model's next token."""
    engine = spec_engine
    max_tokens = 1 + (K + 1) * (WARMUP + rounds.step + 1)  # every timed step drafts K; none finishes
    reference = greedy(engine, max_tokens)
    [out] = start(engine, 1, max_tokens, prediction=tuple(reference))
    steps, moved = step_engine(benchmark, engine, rounds.step)
    assert moved["forward_passes"] == moved["spec_steps"] == steps
    assert moved["spec_proposed_tokens"] == moved["spec_accepted_tokens"] == K * steps  # the known prefix, accepted
    assert moved["generation_tokens_total"] == (K + 1) * steps
    engine.run_until_idle()
    assert token_ids(out) == reference  # lossless: the tokens of plain one-token decode steps
    benchmark.extra_info.update(engine_info(engine), k=K, rows=K + 1, accepted_per_step=K)
    seconds = median_s(benchmark)
    if seconds:
        benchmark.extra_info.update(step_ms=round(seconds * 1e3, 2), tokens_per_s=round((K + 1) / seconds, 1),
                                    weight_gb_per_s=round(engine.runner.model.weight_bytes / seconds / 1e9, 2))
