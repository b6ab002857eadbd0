"""Small seeded random models shared by the skills tests (Llama, moonshine_streaming), and one torch thread."""

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


def small_moonshine(seed: int = 0):
    from transformers import MoonshineStreamingConfig, MoonshineStreamingForConditionalGeneration

    torch.manual_seed(seed)
    cfg = MoonshineStreamingConfig(
        encoder_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=2),
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512)
    model = MoonshineStreamingForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # norms start at identity; random ones test that they are applied
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.3, 0.3) if name.endswith("gamma") else p.uniform_(0.7, 1.3)
    return model


@pytest.fixture(scope="module")
def make_moonshine():
    """small_moonshine(seed) -> a transformers MoonshineStreamingForConditionalGeneration."""
    return small_moonshine


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two threads on a shared 2-core machine run small ops many times slower (spinning)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
