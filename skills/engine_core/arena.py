"""One buffer on huge pages for the weights a decode step streams (small_gemm's copies).

A few-row step reads every matmul weight once, from DRAM, in layer order. Where those weights
lie in physical memory changes how fast they stream: on the 2-core AMD EPYC, SmolLM2-135M's
small_gemm copies as the loader left them (4 KB pages, between oneDNN's copies and the loading
buffers) took 5.5 ms a step of 1 row, a fresh contiguous copy 4.8 ms, and one copy on
transparent huge pages 4.1 ms (medians of 100 interleaved rounds, load ~1). One 2 MB page covers
512 small ones, so the stream misses the TLB 512x less often and each page is physically whole.

`gather` copies tensors into one such buffer in the order given (the step's order) and returns
views of it, with the same values: the bits are untouched, only the placement changes. Where the
OS has no `MADV_HUGEPAGE` (not Linux, or a kernel without transparent huge pages) the buffer is
the same single block on ordinary pages.
"""

from __future__ import annotations

import mmap

import torch

HUGE_PAGE = 2 << 20
ALIGN = 64  # one cache line: each weight starts on its own line


def _aligned(n: int, to: int) -> int:
    return -(-n // to) * to


def huge_page_buffer(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of `nbytes` starting on a 2 MB boundary, advised onto transparent huge pages."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or not hasattr(mmap, "MAP_ANONYMOUS"):
        return torch.empty(nbytes, dtype=torch.uint8)
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(advice)
    except OSError:  # a kernel built without transparent huge pages: 4 KB pages, still one block
        pass
    whole = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` alive as long as any view
    start = (-whole.data_ptr()) % HUGE_PAGE
    return whole[start: start + nbytes]


def gather(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of `tensors` (contiguous, same shapes, dtypes and values) laid out one after another
    in one huge-page buffer."""
    if not tensors:
        return []
    sizes = [t.numel() * t.element_size() for t in tensors]
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end = _aligned(end + size, ALIGN)
    buffer = huge_page_buffer(end)
    copies = []
    for t, start, size in zip(tensors, offsets, sizes):
        view = buffer[start: start + size].view(t.dtype).view(t.shape)
        view.copy_(t)
        copies.append(view)
    return copies
