"""The model's shape (from the transformers config, the only thing taken from it) and the engine's knobs."""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION, LINEAR = "full_attention", "linear_attention"


@dataclass(frozen=True)
class HybridConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layer_types: tuple[str, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    max_position: int
    key_heads: int  # GatedDeltaNet
    value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int
    allow_neg_eigval: bool

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_heads * self.key_head_dim + self.value_heads * self.value_head_dim

    @property
    def num_attention_layers(self) -> int:
        return self.layer_types.count(ATTENTION)

    @property
    def num_linear_layers(self) -> int:
        return self.layer_types.count(LINEAR)

    @classmethod
    def from_hf(cls, hf) -> "HybridConfig":
        """From a transformers OlmoHybridConfig."""
        if getattr(hf, "hidden_act", "silu") != "silu":
            raise ValueError(f"only SiLU is implemented, not {hf.hidden_act}")
        rope = dict(getattr(hf, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default" or rope.get("rope_theta") is None:
            raise ValueError(f"only default rope is implemented, not {rope}")
        if not getattr(hf, "linear_allow_neg_eigval", True):
            raise ValueError("only allow_neg_eigval models are implemented")
        if getattr(hf, "attention_bias", False):
            raise ValueError("attention biases are not implemented")
        types = tuple(hf.layer_types)
        if set(types) - {ATTENTION, LINEAR}:
            raise ValueError(f"unknown layer types {set(types) - {ATTENTION, LINEAR}}")
        return cls(
            vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
            layer_types=types, num_heads=hf.num_attention_heads, num_kv_heads=hf.num_key_value_heads,
            head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
            rope_theta=float(rope["rope_theta"]), rms_eps=hf.rms_norm_eps, max_position=hf.max_position_embeddings,
            key_heads=hf.linear_num_key_heads, value_heads=hf.linear_num_value_heads,
            key_head_dim=hf.linear_key_head_dim, value_head_dim=hf.linear_value_head_dim,
            conv_kernel=hf.linear_conv_kernel_dim, allow_neg_eigval=True,
        )


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512  # rows per forward: every decode's one, then prompt chunks
    max_model_len: int = 8192
    threads: int | None = None  # torch intra-op threads; None: every core
    native_kernels: bool = True  # kernels.cpp (split invariant); False: the torch fallback
    prefix_cache: bool = True
    state_block: int = 64  # snapshot the recurrent states every this many prompt tokens
    cache_bytes: int = 2 << 30  # the prefix cache's budget (K/V segments + snapshots)
    # Admission waits for a running prefill that shares at least this many more prompt tokens than
    # the cache holds, so the shared part is computed once (0: never wait).
    wait_for_shared: int = 64
    min_rows: int = 0  # pad every matmul to at least this many rows; 0: the load-time check decides
    share_prefix_reads: bool = True  # decode rows read a shared prompt prefix's K/V once (sharing.py)
    stream_interval: int = 1  # outputs handed to the server this many at a time after the first (QueueStream)
    greedy_head: bool = True  # greedy rows without logprobs: the argmax from a screen of the head (greedy_head.py)
    greedy_screen: str = "int8"  # that screen's weights: int8 (AVX-512 VNNI) or bf16 (AVX-512 BF16); bf16 without VNNI
    layer_loop: bool = True  # the C++ kernels' decoder layers as one call (kernels.cpp LayerLoop), the same bits

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be at least max_num_seqs (one decode row each)")
        if self.state_block < 1:
            raise ValueError("state_block must be positive")
        if self.stream_interval < 1:
            raise ValueError("stream_interval must be positive")
        if self.greedy_screen not in ("int8", "bf16"):
            raise ValueError("greedy_screen must be int8 or bf16")
