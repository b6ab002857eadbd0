"""Small seeded random Llama models shared by the skills tests."""

from __future__ import annotations

import pytest
import torch


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
               tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
               bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():  # norms are initialised to ones; random ones test them too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def make_llama():
    """tiny_llama(seed, **config overrides) -> a transformers LlamaForCausalLM."""
    return tiny_llama


@pytest.fixture
def hf_model():
    return tiny_llama()
