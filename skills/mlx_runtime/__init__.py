"""An MLX serving engine for Llama-family models (mlx-lm's model code): greedy, JSON-schema
constraints with jump-forward whose multi-token forwards are bit-identical to one-token steps.
See NOTE.md. Import it in the mlx-lm environment (mlx, mlx-lm, llguidance)."""

from .engine import EngineConfig, MlxEngine
from .forward import InvariantLlama, LinearPlan, calibrate_group, grouped_matmul

__all__ = ["EngineConfig", "InvariantLlama", "LinearPlan", "MlxEngine", "calibrate_group", "grouped_matmul"]
