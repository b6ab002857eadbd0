"""Setting F's oracle, scored as a user would (pytest scenarios/ with --stack), passes an honest
stack and FAILS the wrong ones: a fixed image, another seed's image, noise, and a stack that
claims text K/V reuse without /metrics showing any. The stacks are test doubles
(tests/stacks/image_double.py) serving the real tiny model, each with one fault put in on purpose;
they are scored in one run, so the reference images are drawn once."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.row import read_rows

REPO = Path(__file__).resolve().parent.parent
MODULE = "scenarios/test_text_to_image.py"
MODES = ("honest", "fixed", "other-seed", "noise", "claims-reuse")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    tmp = tmp_path_factory.mktemp("image-oracle")
    base = yaml.safe_load((REPO / "tests" / "stacks" / "image_double.yaml").read_text())
    stacks = []
    for mode in MODES:
        spec = {**base, "name": f"image-{mode}", "command": [*base["command"][:-1], mode]}
        if mode == "claims-reuse":
            spec["supports"] = [*base["supports"], "text_kv_reuse"]
        path = tmp / f"image-{mode}.yaml"
        path.write_text(yaml.safe_dump(spec))
        stacks += ["--stack", str(path)]
    out = subprocess.run([sys.executable, "-m", "pytest", MODULE, "-p", "no:cacheprovider", "-q", "--profile", "smoke",
                          "--results-dir", str(tmp), "--no-leaderboard", *stacks],
                         cwd=REPO, capture_output=True, text=True, timeout=1800)
    rows = {}
    for row in read_rows(tmp):
        rows.setdefault(row.stack, {})[row.kind] = row
    return out, rows


def _details(row, key: str) -> list:
    prompts = (row.accuracy or {}).get("prompts") or (row.outputs or {}).get("prompts") or []
    return [(p.get("detail") or {}).get(key) for p in prompts]


def test_an_honest_stack_passes_pixel_exact(scored):
    out, rows = scored
    assert "Traceback" not in out.stdout, out.stdout[-3000:]
    acc, cell = rows["image-honest"]["accuracy"], rows["image-honest"]["performance"]
    assert acc.status == "ok", acc.accuracy["summary"]
    assert cell.status == "ok", cell.error
    assert all(_details(acc, "exact")) and all(_details(cell, "exact"))  # the same loop, the same pixels


@pytest.mark.parametrize("mode", ["fixed", "other-seed", "noise"])
def test_a_wrong_image_fails_every_pass(scored, mode):
    _, rows = scored
    acc, cell = rows[f"image-{mode}"]["accuracy"], rows[f"image-{mode}"]["performance"]
    assert acc.status == "failed", acc.accuracy["summary"]
    assert cell.status == "failed" and "measured outputs" in cell.error, cell.error
    psnrs = [p for p in _details(cell, "psnr_db") if p is not None]
    assert psnrs and min(psnrs) < 30, psnrs  # far below the 40 dB bound, not at its edge


def test_the_fixed_image_passes_only_its_first_request(scored):
    _, rows = scored
    acc = rows["image-fixed"]["accuracy"]
    assert _details(acc, "exact")[0] is True and not any(_details(acc, "exact")[1:])


def test_claimed_reuse_without_evidence_fails_the_engagement_guard(scored):
    _, rows = scored
    acc, cell = rows["image-claims-reuse"]["accuracy"], rows["image-claims-reuse"]["performance"]
    assert acc.status == "ok"  # its images are right
    assert cell.status == "failed" and cell.engagement["verdict"] == "fail", cell.error
    assert "prefix_rows_reused_total" in cell.error
