"""Memory bandwidth of this machine and the "bandwidth achieved" of a decode, as gpt-fast reports it.

A decode step at batch 1 reads every weight once, so model bytes x tokens/s is the memory
traffic it sustains; against a large copy measured on the same machine in the same run, it says
how close a stack is to the bound a batch-1 decode can never beat.

Both halves of that product must be true of the stack measured: the bytes are those it loads
(the GGUF file for a spec that loads `{gguf}`, else the safetensors folder), and a token per
second is a forward per second only where each forward yields one token. A stack that drafts and
verifies several tokens per forward reads the weights once for all of them, so weights x tok/s
would overstate its memory traffic; `tokens_per_forward` reads that from its /metrics counters.
"""
from __future__ import annotations

import mmap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.assets import gguf_file

COPY_BYTES = 1 << 30  # well past any cache


def _floats(nbytes: int):
    """A float32 tensor of about `nbytes` on transparent huge pages where the OS offers them.

    The same copy on 4 KB pages measured 51.6 GB/s against 62.5 on huge pages (AMD EPYC, 2
    cores); a stack may stream its weights from huge pages (engine_core does), so the bound it
    is compared with must be the copy at its best, not one slowed by TLB misses."""
    import torch

    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or not hasattr(mmap, "MAP_ANONYMOUS"):
        return torch.empty(nbytes // 4, dtype=torch.float32)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(advice)
    except OSError:  # a kernel built without transparent huge pages
        pass
    return torch.frombuffer(region, dtype=torch.float32)  # the tensor keeps the mapping alive


def memory_bandwidth(nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Bytes/s of a large copy (read + write counted), best of `repeats`, with torch's threads."""
    src, dst = _floats(nbytes), _floats(nbytes)
    src.fill_(1.0)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return 2 * nbytes / best


def weight_bytes(model_dir: Path) -> int:
    """The weights of a prepared model folder as stored (safetensors), read once per decode step."""
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


GGUF_FIELD = "{gguf}"  # the spec placeholder for the GGUF file a model folder was built from (harness.placeholders)


@dataclass(frozen=True)
class Weights:
    nbytes: int
    source: str  # what was measured: "safetensors", or the GGUF file's name


def weights_read(model_dir: Path, command: Sequence[str]) -> Weights | None:
    """What a stack launched with `command` (its spec's, placeholders unfilled) reads per decode step:
    the GGUF file where it loads `{gguf}`, else the prepared safetensors; None for a GGUF the model
    folder does not name."""
    if not any(GGUF_FIELD in str(part) for part in command):
        return Weights(weight_bytes(model_dir), "safetensors")
    gguf = gguf_file(Path(model_dir))
    return Weights(gguf.stat().st_size, gguf.name) if gguf else None


# /metrics counters (our contract's JSON names, then vLLM's Prometheus ones)
FORWARD_COUNTERS = ("forward_passes",)
ACCEPTED_COUNTERS = ("spec_accepted_tokens", "vllm:spec_decode_num_accepted_tokens_total")
GENERATED_COUNTERS = ("generation_tokens_total", "vllm:generation_tokens_total")
# Plain decoding yields at most one token per forward (prefill chunks are forwards too); above this
# the decode is taken to be speculative.
ONE_TOKEN_PER_FORWARD = 1.05


def _first(counters: Mapping[str, float], names: tuple[str, ...]) -> float | None:
    return next((counters[n] for n in names if n in counters), None)


def tokens_per_forward(counters: Mapping[str, float] | None, output_tokens: float | None) -> float | None:
    """Output tokens per forward pass over a cell, from its /metrics delta; None without evidence.

    Two estimates: output tokens / `forward_passes`, and, from accepted draft tokens, output /
    (output - accepted), since a forward yields one token of its own plus the drafts it accepted.
    Where both are given the larger is taken: either one showing several tokens per forward is enough.
    `output_tokens` is the client's count; the stack's generation counter stands in without it.
    """
    if not counters:
        return None
    out = output_tokens if output_tokens else _first(counters, GENERATED_COUNTERS)
    if not out or out <= 0:
        return None
    estimates = []
    forwards = _first(counters, FORWARD_COUNTERS)
    if forwards and forwards > 0:
        estimates.append(out / forwards)
    accepted = _first(counters, ACCEPTED_COUNTERS)
    if accepted is not None and accepted >= 0:
        estimates.append(out / (out - accepted) if accepted < out else float("inf"))
    return max(estimates) if estimates else None


def declared_speculation(flags: Mapping | None, command: Sequence[str]) -> str | None:
    """Where a spec says it speculates (a `flags` key or a command argument naming it), which; else None."""
    for key, value in (flags or {}).items():
        if "specul" in str(key).lower() and value not in (None, False, "", {}, [], "none", "off"):
            return f"flags.{key}"
    return next((str(arg) for arg in command if "specul" in str(arg).lower()), None)
