"""The huge-page arena for the weights a decode step streams (skills/engine_core/arena.py)."""

from __future__ import annotations

import gc
import mmap

import pytest
import torch

from skills.engine_core import arena
from skills.engine_core.kernels import Kernels
from skills.engine_core.packing import PackedLinear
from skills.engine_core.scheduler import ScheduledStep
from tests.skills.test_engine_core_model import forward, make_runner, seq_at


@pytest.fixture
def small_gemm():
    if not Kernels.use_native(True) or Kernels.small_gemm is None:
        Kernels.use_native(False)
        pytest.skip("small_gemm needs the native kernels and AVX-512")
    yield
    Kernels.use_native(False)


def test_gather_copies_values_in_order_into_one_aligned_buffer() -> None:
    torch.manual_seed(0)
    tensors = [torch.randn(3, 5).bfloat16(), torch.randn(7).float(), torch.randint(0, 9, (2, 2, 3), dtype=torch.int64)]
    copies = arena.gather(tensors)
    for t, c in zip(tensors, copies):
        assert c.dtype == t.dtype and c.shape == t.shape and torch.equal(c, t)
    bases = {c.untyped_storage().data_ptr() for c in copies}
    assert len(bases) == 1, "every copy is a view of one buffer"
    addresses = [c.data_ptr() for c in copies]
    assert addresses == sorted(addresses) and all(a % arena.ALIGN == 0 for a in addresses)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        assert addresses[0] % arena.HUGE_PAGE == 0
    expected = [t.clone() for t in tensors]
    del tensors, c, t
    gc.collect()
    assert all(torch.equal(c, e) for c, e in zip(copies, expected)), "the mapping outlives its function"


def test_gather_of_nothing_is_nothing() -> None:
    assert arena.gather([]) == []


def test_a_packed_model_streams_small_gemm_weights_from_one_buffer_with_the_same_logits(make_llama, monkeypatch,
                                                                                         small_gemm) -> None:
    hf = make_llama(2, tie_word_embeddings=True)
    arranged, scattered = make_runner(hf, torch.bfloat16), make_runner(hf, torch.bfloat16)
    arranged.model.pack()
    monkeypatch.setattr(arena, "gather", lambda tensors: list(tensors))
    scattered.model.pack()
    small = [m.small for m in arranged.model.modules() if isinstance(m, PackedLinear)]
    assert len(small) == 2 * 4 + 1  # two layers of qkv, o, gate_up, down; the lm_head
    assert len({w.untyped_storage().data_ptr() for w in small}) == 1
    assert [w.data_ptr() for w in small] == sorted(w.data_ptr() for w in small), "laid out in step order"
    prompt = [5, 17, 33, 8, 91, 4, 60]
    a = forward(arranged, ScheduledStep([], [(seq_at(0, prompt), 7)], 1))
    b = forward(scattered, ScheduledStep([], [(seq_at(0, prompt), 7)], 1))
    assert torch.equal(a, b)


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no madvise advice to refuse here")
def test_a_kernel_that_refuses_the_huge_page_advice_still_gets_one_block(monkeypatch) -> None:
    monkeypatch.setattr(mmap, "MADV_HUGEPAGE", 12345)  # an advice no kernel knows: madvise raises EINVAL
    with pytest.raises(OSError):
        mmap.mmap(-1, 4096).madvise(mmap.MADV_HUGEPAGE)
    copies = arena.gather([torch.arange(10.0), torch.ones(3, dtype=torch.bfloat16)])
    assert torch.equal(copies[0], torch.arange(10.0)) and torch.equal(copies[1], torch.ones(3, dtype=torch.bfloat16))
    assert copies[0].untyped_storage().data_ptr() == copies[1].untyped_storage().data_ptr()
