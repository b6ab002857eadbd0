"""A serving engine for olmo_hybrid (GatedDeltaNet + attention) with a hybrid prefix cache
(skills/hybrid_cache): fp32, continuous batching, chunked prefill, split-invariant C++ row
kernels so that prefix-cache hits are exact. See NOTE.md."""
