"""The MLX conversion's config fix: mlx-lm 0.32.2 reads a Llama's RoPE base only at the top level of
config.json, where transformers 5 writes it under `rope_parameters` (SmolLM2 ran on 10000, not
100000, and its next-token distribution left the reference's top-5)."""
import json

from baselines.mlx_convert import lift_rope_theta


def _config(tmp_path, data: dict):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_the_rope_base_is_lifted_where_mlx_lm_reads_it(tmp_path):
    path = _config(tmp_path, {"model_type": "llama", "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}})
    assert lift_rope_theta(path)
    assert json.loads(path.read_text())["rope_theta"] == 100000.0


def test_a_config_mlx_lm_already_reads_or_a_scaled_rope_is_left_alone(tmp_path):
    top = {"rope_theta": 500000.0, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}
    scaled = {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}}
    for data in (top, scaled, {"model_type": "llama"}):
        path = _config(tmp_path, data)
        assert not lift_rope_theta(path) and json.loads(path.read_text()) == data
