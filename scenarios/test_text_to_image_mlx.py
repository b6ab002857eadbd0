"""Setting G: setting F's requests and oracle, scored on this setting's YAML (the MLX port against
the torch reference); the tests are F's (scenarios/test_text_to_image.py)."""
from __future__ import annotations

import pytest

from scenarios.test_text_to_image import hold_references, test_accuracy, test_performance

pytestmark = pytest.mark.setting("G")
__all__ = ["hold_references", "test_accuracy", "test_performance"]
