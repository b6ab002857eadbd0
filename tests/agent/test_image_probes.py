"""The agent's probes for an image setting: an unseen prompt and seed, judged against the plain
loop's image, pass an honest stack and FAIL one drawing another seed's image or noise (test
doubles serving the real tiny model: tests/stacks/image_double.py)."""
import pytest
import yaml

from agent.image_probes import run_image_probes, unseen_task
from harness.assets import ensure_model
from harness.scenario import load_scenario
from harness.stack import REPO_ROOT, load_spec

pytestmark = pytest.mark.slow


def _double(tmp_path, mode: str):
    base = yaml.safe_load((REPO_ROOT / "tests" / "stacks" / "image_double.yaml").read_text())
    path = tmp_path / f"image-{mode}.yaml"
    path.write_text(yaml.safe_dump({**base, "name": f"image-{mode}", "command": [*base["command"][:-1], mode]}))
    return load_spec(path)


@pytest.mark.parametrize("mode, passes", [("honest", True), ("other-seed", False), ("noise", False)])
def test_probes_pass_only_the_model_s_own_image(tmp_path, mode, passes):
    scenario = load_scenario(REPO_ROOT / "scenarios" / "text_to_image.yaml")
    result = run_image_probes(_double(tmp_path, mode), scenario, "smoke", ensure_model("showo2-tiny"), tmp_path / "logs")
    assert result.ok is passes, result.details


def test_the_unseen_prompt_is_new_each_time():
    profile = {"steps": 20, "guidance": 5.0}
    a, b = unseen_task(profile), unseen_task(profile)
    assert (a.prompt, a.seed) != (b.prompt, b.seed) and a.steps == 20
