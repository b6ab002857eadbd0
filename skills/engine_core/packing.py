"""Prepacked oneDNN weights for the linear layers (CPU).

`F.linear` on a plain weight makes oneDNN reorder the weight into its blocked layout on every
call; for decode-sized inputs (a few rows) that reorder costs as much as the matmul. Packing
once at load time (as inductor's freezing pass does) saves 40-80 us per matmul on this CPU,
about 120 matmuls per forward of SmolLM2-135M.
"""

from __future__ import annotations

import torch
from torch import nn


def can_pack(dtype: torch.dtype) -> bool:
    return torch.backends.mkldnn.is_available() and dtype in (torch.bfloat16, torch.float32)


class PackedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach()), persistent=False)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")


def pack_linears(module: nn.Module) -> int:
    """Replace every nn.Linear below `module` by a PackedLinear; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, PackedLinear(child.weight, child.bias))
            count += 1
        else:
            count += pack_linears(child)
    return count


class PackedHead(nn.Module):
    """The lm_head as a packed copy (a tied embedding stays plain for the lookup)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.linear = PackedLinear(weight, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
