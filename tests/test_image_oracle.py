"""Setting F's oracle, scored as a user would (pytest scenarios/ with --stack), passes an honest
stack and FAILS the wrong ones: a fixed image, another seed's image, noise, and a stack that
claims text K/V reuse without /metrics showing any. The stacks are test doubles
(tests/stacks/image_double.py) serving the real tiny model, each with one fault put in on purpose;
they are scored in one run, so the reference images are drawn once."""

import pytest

from tests.doubles import double, score

MODULE = "scenarios/test_text_to_image.py"
MODES = ("honest", "fixed", "other-seed", "noise", "claims-reuse")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    specs = [double("image_double.yaml", f"image-{mode}", mode) for mode in MODES]
    specs[MODES.index("claims-reuse")]["supports"] += ["text_kv_reuse"]
    return score(tmp_path_factory.mktemp("image-oracle"), MODULE, specs, timeout=1800)


def _details(row, key: str) -> list:
    prompts = (row.accuracy or {}).get("prompts") or (row.outputs or {}).get("prompts") or []
    return [(p.get("detail") or {}).get(key) for p in prompts]


def test_an_honest_stack_passes_within_one_level_of_the_reference(scored):
    out, rows = scored
    assert "Traceback" not in out.stdout, out.stdout[-3000:]
    acc, cell = rows["image-honest"]["accuracy"], rows["image-honest"]["performance"]
    assert acc.status == "ok", acc.accuracy["summary"]
    assert cell.status == "ok", cell.error
    # The same loop, the same pixels, but for a level here and there: two processes running it have
    # given one image 4 of 16,384 pixels one level apart (a value at a rounding edge).
    assert all(d <= 1 for d in _details(acc, "max_abs_diff") + _details(cell, "max_abs_diff"))


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
    passed = [p.get("ok") for p in acc.accuracy["prompts"]]
    assert passed[0] is True and not any(passed[1:]), passed
    assert _details(acc, "max_abs_diff")[0] <= 1  # its own image, give or take a level (see above)


def test_claimed_reuse_without_evidence_fails_the_engagement_guard(scored):
    _, rows = scored
    acc, cell = rows["image-claims-reuse"]["accuracy"], rows["image-claims-reuse"]["performance"]
    assert acc.status == "ok"  # its images are right
    assert cell.status == "failed" and cell.engagement["verdict"] == "fail", cell.error
    assert "prefix_rows_reused_total" in cell.error
