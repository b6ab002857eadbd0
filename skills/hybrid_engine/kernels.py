"""The forward's row kernels: C++ (kernels.cpp, built once per machine) or the torch fallback.

Both compute the same functions (see kernels.cpp for the layouts). The C++ ones are *split
invariant*: a row's bits depend only on its own inputs and its sequence's state, so prefilling a
prompt in any chunks, alone or beside other sequences, or restoring a snapshot at any token and
continuing, gives the same numbers. The torch fallback (no compiler) prefills GatedDeltaNet with
the chunked delta rule (64-token chunks from wherever the segment starts) and attends with SDPA:
the same model to fp32 rounding, but a restore can change the last bits.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("kernels.cpp")
CHUNK = 64  # the fallback's delta-rule chunk


@functools.cache
def native():
    """The C++ extension, or None (logged) where it cannot be built; SERVEBENCH_NO_NATIVE_KERNELS=1 forces None."""
    if os.environ.get("SERVEBENCH_NO_NATIVE_KERNELS"):
        return None
    try:
        from skills.cpu_kernels.build import load

        return load("servebench_hybrid_kernels", [SOURCE])
    except Exception as exc:  # no compiler or headers: the torch path still runs
        text = str(exc).strip()
        log.warning("hybrid kernels: could not build the C++ kernels (%s); using torch",
                    text.splitlines()[-1][:200] if text else type(exc).__name__)
        return None


class TorchKernels:
    """The fallback: the same signatures as the C++ extension, in torch."""

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    @staticmethod
    def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    @staticmethod
    def attn_prep(qkv, q_weight, k_weight, cos, sin, slots, positions, k_pool, v_pool, num_heads: int,
                  eps: float) -> torch.Tensor:
        kv_heads, d = v_pool.shape[1], v_pool.shape[3]
        qn, kn = num_heads * d, kv_heads * d
        live = slots >= 0
        q_out = torch.zeros(qkv.shape[0], qn, dtype=qkv.dtype)
        rows = qkv[live]
        c, s = cos[positions[live]], sin[positions[live]]
        q = TorchKernels.rms_norm(rows[:, :qn], q_weight, eps).view(-1, num_heads, d)
        k = TorchKernels.rms_norm(rows[:, qn:qn + kn], k_weight, eps).view(-1, kv_heads, d)
        q_out[live] = _rope(q, c, s).reshape(-1, qn)
        slot, pos = slots[live], positions[live]
        k_pool[slot, :, :, pos] = _rope(k, c, s)
        v_pool[slot, :, pos] = rows[:, qn + kn:].reshape(-1, kv_heads, d)
        return q_out

    @staticmethod
    def row_attention(q, k_pool, v_pool, slots, positions, share_slot, share_len, scale: float) -> torch.Tensor:
        """Runs of rows of one slot at consecutive positions attend together (SDPA, causal); each
        reads its own slot (share_slot / share_len, the C++ kernel's shared-prefix reads, unused)."""
        kv_heads, d = v_pool.shape[1], v_pool.shape[3]
        heads = q.shape[1] // d
        out = torch.zeros_like(q)
        for first, count in _runs(slots.tolist(), positions.tolist()):
            slot, start = int(slots[first]), int(positions[first])
            end = start + count
            keys, values = k_pool[slot, :, :, :end].transpose(-1, -2), v_pool[slot, :, :end]
            qh = q[first:first + count].view(count, heads, d).transpose(0, 1)
            mask = torch.ones(count, end, dtype=torch.bool).tril(start)
            o = F.scaled_dot_product_attention(qh.unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0),
                                               attn_mask=mask, scale=scale, enable_gqa=heads != kv_heads)
            out[first:first + count] = o[0].transpose(0, 1).reshape(count, heads * d)
        return out

    @staticmethod
    def gdn(proj, conv_weight, a_log, dt_bias, norm_weight, conv_state, rec_state, seg_slot, seg_start, seg_len,
            save_rows, conv_save, rec_save, key_heads: int, norm_eps: float) -> torch.Tensor:
        value_heads, dk, dv = rec_state.shape[1:]
        window, conv_dim = conv_state.shape[1:]
        key_dim, value_dim = key_heads * dk, value_heads * dv
        out = torch.zeros(proj.shape[0], value_dim, dtype=proj.dtype)
        saves = {int(r): i for i, r in enumerate(save_rows.tolist())}
        for slot, first, count in zip(seg_slot.tolist(), seg_start.tolist(), seg_len.tolist()):
            # Pieces end at save rows, so the state is at hand there.
            cuts = sorted({first + count} | {r + 1 for r in saves if first <= r < first + count})
            begin = first
            for stop in cuts:
                rows = proj[begin:stop]
                mixed = torch.cat([conv_state[slot], rows[:, :conv_dim]])
                conv_state[slot] = mixed[-window:]
                x = sum(mixed[j:j + len(rows)] * conv_weight[j] for j in range(window + 1))
                x = F.silu(x)
                q = x[:, :key_dim].view(-1, key_heads, dk)
                k = x[:, key_dim:2 * key_dim].view(-1, key_heads, dk)
                v = x[:, 2 * key_dim:].view(-1, value_heads, dv)
                beta = 2.0 * torch.sigmoid(rows[:, conv_dim + value_heads:conv_dim + 2 * value_heads])
                g = -a_log.exp() * F.softplus(rows[:, conv_dim:conv_dim + value_heads] + dt_bias)
                o, rec_state[slot] = _delta_rule(q, k, v, g, beta, rec_state[slot])
                o = TorchKernels.rms_norm(o, norm_weight, norm_eps)
                gate = rows[:, conv_dim + 2 * value_heads:].view(-1, value_heads, dv)
                out[begin:stop] = (o * F.silu(gate)).reshape(-1, value_dim)
                if stop - 1 in saves:
                    conv_save[saves[stop - 1]] = conv_state[slot]
                    rec_save[saves[stop - 1]] = rec_state[slot]
                begin = stop
        return out


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [rows, heads, d]; cos, sin [rows, d/2] (rotate-half pairs i, i + d/2)."""
    half = x.shape[-1] // 2
    c, s = cos[:, None], sin[:, None]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


def _runs(slots: list[int], positions: list[int]) -> list[tuple[int, int]]:
    """(first row, count) of each run of rows of one slot at consecutive positions (padding skipped)."""
    runs: list[tuple[int, int]] = []
    for i, (slot, pos) in enumerate(zip(slots, positions)):
        if slot < 0:
            continue
        if runs and slots[i - 1] == slot and positions[i - 1] + 1 == pos and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def _delta_rule(q, k, v, g, beta, state):
    """Gated delta rule over one sequence's tokens (q, k [t, hk, dk], v [t, hv, dv], g, beta [t, hv]),
    from `state` [hv, dk, dv]: one token stepped directly, more in chunks of CHUNK (the UT-transform
    form of the DeltaNet papers). Returns (outputs [t, hv, dv], final state)."""
    ratio = v.shape[1] // k.shape[1]
    q = _l2(q).repeat_interleave(ratio, 1)
    k = _l2(k).repeat_interleave(ratio, 1)
    q = q * q.shape[-1] ** -0.5
    q, k, v = (x.transpose(0, 1) for x in (q, k, v))  # [h, t, d]
    g, beta = g.transpose(0, 1), beta.transpose(0, 1)  # [h, t]
    if q.shape[1] == 1:
        s = state * g[:, 0].exp()[:, None, None]
        kv = (s * k[:, 0, :, None]).sum(-2)
        delta = (v[:, 0] - kv) * beta[:, 0, None]
        s = s + k[:, 0, :, None] * delta[:, None, :]
        return (s * q[:, 0, :, None]).sum(-2)[None], s
    outs = []
    for c0 in range(0, q.shape[1], CHUNK):
        sl = slice(c0, c0 + CHUNK)
        o, state = _chunk(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], state)
        outs.append(o)
    return torch.cat(outs, dim=1).transpose(0, 1), state


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def _chunk(q, k, v, g, beta, state):
    """One chunk (any length <= CHUNK) of the gated delta rule, [h, n, d] tensors, from `state`."""
    n = q.shape[1]
    cum = g.cumsum(-1)  # [h, n]
    upper = torch.ones(n, n, dtype=torch.bool).triu(1)
    decay = (cum[:, :, None] - cum[:, None, :]).masked_fill(upper, float("-inf")).exp()  # [h, n, n]
    k_beta, v_beta = k * beta[..., None], v * beta[..., None]
    system = ((k_beta @ k.transpose(-1, -2)) * decay).tril(-1)
    eye = torch.eye(n, dtype=q.dtype)
    new_v = torch.linalg.solve_triangular(eye + system, v_beta, upper=False, unitriangular=True)
    k_cum = torch.linalg.solve_triangular(eye + system, k_beta * cum.exp()[..., None], upper=False,
                                          unitriangular=True)
    v_new = new_v - k_cum @ state
    attn = ((q @ k.transpose(-1, -2)) * decay).masked_fill(upper, 0.0)
    out = (q * cum.exp()[..., None]) @ state + attn @ v_new
    tail = (cum[:, -1:] - cum).exp()[..., None]
    state = state * cum[:, -1].exp()[:, None, None] + (k * tail).transpose(-1, -2) @ v_new
    return out, state


def kernels(use_native: bool = True):
    """The C++ kernels where wanted and buildable, else the torch ones; (kernels, name)."""
    ext = native() if use_native else None
    return (ext, "native") if ext is not None else (TorchKernels, "torch")
