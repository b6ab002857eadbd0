"""y = x W^T for the model's matrices, by one of three backends:

- "native": kernels.cpp's `linear` on weights packed into column panels: every output a
  multiply-add chain over k in order, so a row's bits never depend on the row count (by
  construction). On the AMD EPYC (AVX-512, no AMX) this was built on, fp32: the 49152 x 256
  lm_head at 8 rows 3.8 ms (1 thread) / 2.7 ms (2), against oneDNN's 6.3 ms and MKL's 15.4 ms
  (MKL picks slow kernels on AMD); the layer matrices at 8 rows 2-4x faster than oneDNN (no per-call
  overhead), at 512 rows as fast or faster. A matrix whose every weight is a bf16 value (a bf16
  checkpoint served in fp32) is packed in bf16 and widened as it is read: the same fp32 numbers
  and bits at half the bytes, which is what a decode step costs (`weight_dtype`).
- "onednn": prepacked oneDNN weights (where the C++ kernels do not build); its rows came out
  bit-identical at every row count from 1 to 600 here.
- "mkl": plain F.linear; its rows differ below 4 or 12 rows, so steps are padded (rows.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def backend_for(kernels) -> str:
    """native where the C++ kernels are in use, else oneDNN where torch has it, else MKL."""
    if hasattr(kernels, "pack_linear"):
        return "native"
    return "onednn" if torch.backends.mkldnn.is_available() else "mkl"


class Linear:
    def __init__(self, weight: torch.Tensor, backend: str = "mkl", kernels=None) -> None:
        weight = weight.detach().contiguous()
        self.out_features, self.in_features = weight.shape
        self.kind = backend
        self._ext = kernels
        self.weight = weight if backend == "mkl" else None
        if backend == "native":
            self.packed = kernels.pack_linear(weight)
        elif backend == "onednn":
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        else:
            self.packed = None
        self.nbytes = (self.packed if backend == "native" else weight).nbytes  # what a step reads

    @property
    def weight_dtype(self) -> str:
        """How the matrix is stored: float32, or bfloat16 where the native panels hold it so."""
        return "bfloat16" if self.kind == "native" and self.packed.dtype == torch.bfloat16 else "float32"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "native":
            return self._ext.linear(x, self.packed, self.out_features)
        if self.kind == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return F.linear(x, self.weight)
