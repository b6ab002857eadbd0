"""skills/engine_core/step_invariance.py (verify steps against one-token decodes, through the
engine's forward) and what the loader does with its answer: keep the matmul, fall back to
small_gemm, or switch speculation off."""

from __future__ import annotations

import pytest
import torch

from skills.engine_core.config import ModelConfig
from skills.engine_core.kernels import Kernels
from skills.engine_core.runner import ModelRunner
from skills.engine_core.step_invariance import check_steps
from skills.engine_core.weights import build_model


class RowCountDependent(torch.nn.Module):
    """The model with its logits nudged in steps of more than `rows` rows: a kernel whose numbers
    depend on the step's row count, as oneDNN's bf16 matmul can on some CPUs."""

    def __init__(self, model, rows: int) -> None:
        super().__init__()
        self.inner, self.cfg, self.rows = model, model.cfg, rows

    def forward(self, batch, pool):
        out = self.inner(batch, pool)
        return out * (1 + 2**-6) if batch.input_ids.shape[0] > self.rows else out


@pytest.fixture
def runner(make_llama) -> ModelRunner:
    """bf16 with the native kernels: rows attend alone, as in the steps the loader checks."""
    if not Kernels.use_native() or not Kernels.rows_alone(torch.bfloat16):
        pytest.skip("the C++ kernels cannot be built here: verify steps use the padded fixed shape instead")
    hf = make_llama(3, initializer_range=0.3)
    model = build_model(ModelConfig.from_hf(hf.config), dict(hf.state_dict()), torch.bfloat16)
    return ModelRunner(model, 2, 128, torch.bfloat16)


def test_the_engines_own_forward_passes(runner) -> None:
    check = check_steps(runner, 9)
    assert check.ok and check.rows == 9 and "1..9 rows" in check.detail


@pytest.mark.parametrize("above, first_bad", [(1, 2), (4, 5)])
def test_a_forward_whose_rows_depend_on_the_row_count_fails(runner, above, first_bad) -> None:
    runner.model = RowCountDependent(runner.model, above)
    check = check_steps(runner, 9)
    assert not check.ok and f"a verify chunk of {first_bad} rows differs" in check.detail
    assert check_steps(runner, above).ok  # only the row counts it checks: a step never takes more


# --- the loader's use of the check, on the real SmolLM2 (bf16, the engine-b configuration) ---


@pytest.fixture(scope="module")
def smollm2():
    from harness.assets import ensure_model

    return ensure_model("smollm2-135m-instruct")


def load(model_dir, monkeypatch, failing: set[str], few_row_matmul: str = "onednn"):
    """An engine loaded with a speculator, the check made to fail for the matmuls in `failing`."""
    import skills.engine_core.loader as loader
    from skills.engine_core.engine import EngineConfig
    from skills.speculative_decoding import SpecConfig, Speculator

    from skills.engine_core.step_invariance import check_steps as real

    tried = []

    def check(runner, rows):
        tried.append(runner.model.few_row_kernel)
        result = real(runner, rows)
        return type(result)(rows, False, "made to fail") if tried[-1] in failing else result

    monkeypatch.setattr(loader, "check_steps", check)
    threads = torch.get_num_threads()
    try:
        engine = loader.load_engine(model_dir, EngineConfig(max_num_seqs=1, max_num_batched_tokens=512, max_model_len=512,
                                                            threads=1, few_row_matmul=few_row_matmul),
                                    Speculator(SpecConfig(num_speculative_tokens=4), auto_k=False))
    finally:
        torch.set_num_threads(threads)
    return engine, tried


@pytest.mark.slow
def test_a_failing_onednn_falls_back_to_small_gemm_or_turns_speculation_off(smollm2, monkeypatch) -> None:
    if not Kernels.use_native() or not Kernels.rows_alone(torch.bfloat16):
        pytest.skip("the C++ kernels cannot be built here: verify steps use the padded fixed shape instead")
    engine, tried = load(smollm2, monkeypatch, failing={"onednn"})
    assert tried[0] == "onednn"
    if Kernels.small_gemm is not None:  # AVX-512 BF16: the row-invariant kernel is the fallback
        assert tried == ["onednn", "small_gemm"] and engine.runtime["few_row_matmul"] == "small_gemm"
        assert engine.speculator is not None and engine.runner.verified_rows == 5
        assert engine.runtime["verify_check"]["ok"]
    else:  # no other matmul: plain decoding, which is lossless by definition
        assert tried == ["onednn"] and engine.speculator is None and engine.runtime["speculation"] is False
        assert engine.runtime["verify_check"] == {"rows": 5, "ok": False, "detail": "made to fail"}


@pytest.mark.slow
def test_speculation_is_switched_off_where_no_matmul_passes(smollm2, monkeypatch) -> None:
    if not Kernels.use_native() or not Kernels.rows_alone(torch.bfloat16):
        pytest.skip("the C++ kernels cannot be built here")
    engine, tried = load(smollm2, monkeypatch, failing={"onednn", "small_gemm", "torch"})
    assert engine.speculator is None and engine.runner.verified_rows == 0
    assert engine.runtime["speculation"] is False and not engine.runtime["verify_check"]["ok"]
    # Nothing made to fail, engine-b's `auto` choice: the first matmul it tries passes on this CPU
    # (oneDNN with AMX, else small_gemm; an explicit oneDNN may not: it fails on an AVX-512 EPYC).
    engine, tried = load(smollm2, monkeypatch, failing=set(), few_row_matmul="auto")
    assert engine.speculator is not None and engine.runtime["verify_check"]["ok"]
    # Every check ran on that first matmul: with oneDNN first, the choice of matmul is checked too.
    first = engine.runtime["few_row_matmul_first"]
    assert tried == [first] * (2 if first == "onednn" else 1) and engine.runtime["few_row_matmul"] == first, \
        (tried, engine.runtime)
