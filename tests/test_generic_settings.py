"""A setting is one YAML and one test module: two test-only settings (tests/settings/) over the
WebSocket audio and HTTP image transports, scored as a user would, against an honest double and
doubles that are wrong or broken; and harness/ names no setting."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.row import read_rows
from harness.scenario import find_scenarios

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ["tests/settings/echo_audio.py", "tests/settings/echo_images.py"]
pytestmark = pytest.mark.slow


def score(tmp_path: Path, mode: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    spec = tmp_path / f"media-{mode}.yaml"
    spec.write_text(json.dumps({"name": f"media-{mode}", "startup_timeout_s": 30, "supports": ["audio_stream", "images"],
                                "command": ["python", "tests/stacks/media_server.py", "--port", "{port}", "--mode", mode]}))
    out = subprocess.run([sys.executable, "-m", "pytest", *SETTINGS, "-p", "no:cacheprovider", "-q",
                          "--results-dir", str(tmp_path), "--stack", str(spec), *extra],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    rows = {(r.setting, r.kind, (r.load_point or {}).get("label"), r.repeat): r for r in read_rows(tmp_path)}
    return out, rows


def test_an_honest_stack_passes_both_and_its_rows_count_their_own_units(tmp_path):
    out, rows = score(tmp_path, "honest")
    assert out.returncode == 0 and "6 passed" in out.stdout, (out.stdout + out.stderr)[-3000:]
    audio = rows[("X", "performance", "conc=4", 0)]
    assert audio.status == "ok" and audio.metrics["unit"] == "audio_s"
    assert audio.metrics["total_output_audio_s"] == pytest.approx(4 * 1.0)  # 4 clips of 1 s, every second covered
    assert audio.metrics["p90_chunk_latency_ms"] >= 20  # the double works 20 ms per chunk: the scenario's own metric
    assert audio.outputs["verdict"] == "pass" and len(audio.outputs["judged"]) == 4
    image = rows[("Y", "performance", "rate=20.0", 0)]
    assert image.status == "ok" and image.metrics["total_output_images"] == 6 and image.metrics["median_e2el_ms"] >= 50
    assert rows[("X", "accuracy", None, 0)].accuracy["verdict"] == "pass"
    salts = {r.salt for r in rows.values()}
    assert len(salts) == 1 and re.fullmatch(r"[0-9a-f]{8}", salts.pop())  # one fresh salt for the run, in every row
    board = (tmp_path / "LEADERBOARD.md").read_text()
    assert "## X: audio echo (test-only)" in board and "audio s/s" in board and "images/s" in board, board
    assert (tmp_path / "plots" / "X-tiny.png").exists()


@pytest.mark.parametrize("mode,setting", [("deaf", "X"), ("unseeded", "Y")])
def test_a_wrong_stack_fails_its_accuracy_and_every_cell(tmp_path, mode, setting):
    out, rows = score(tmp_path, mode)
    assert out.returncode == 1 and "Traceback" not in out.stdout, out.stdout[-3000:]
    assert rows[(setting, "accuracy", None, 0)].accuracy["verdict"] == "fail"
    cells = [r for (s, kind, _, _), r in rows.items() if s == setting and kind == "performance"]
    assert cells and all(r.status == "failed" and "measured outputs" in r.error for r in cells), [r.error for r in cells]
    assert "FAIL" in (tmp_path / "LEADERBOARD.md").read_text()


def test_a_stack_that_answers_garbage_fails_its_requests_with_a_reason_not_the_cell(tmp_path):
    out, rows = score(tmp_path, "garbage")
    assert out.returncode == 1 and "Traceback" not in out.stdout, out.stdout[-3000:]
    audio, image = rows[("X", "performance", "conc=1", 0)], rows[("Y", "performance", "conc=1", 0)]
    assert audio.status == "failed" and audio.metrics["failed"] == 4 and "not JSON" in audio.error, audio.error
    assert image.status == "failed" and "not a PNG" in image.error, image.error


def test_the_harness_names_no_setting():
    words = set()
    for spec in find_scenarios(REPO / "scenarios") + find_scenarios(REPO / "tests" / "settings"):
        words |= {spec.name, *spec.features, *spec.metrics}
    assert "prediction" in words and "median_tok_per_s" in words  # the settings' own words are found
    found = [f"{path.relative_to(REPO)}: {word}" for path in sorted((REPO / "harness").rglob("*.py"))
             for word in words if re.search(rf"\b{re.escape(word)}\b", path.read_text())]
    assert not found, found


def test_each_repeat_of_a_cell_sends_prompts_of_its_own_salt_and_is_judged_on_them(tmp_path):
    """A repeat after the first is salted anew (harness.prompts.repeat_salt): no repeat is served
    from a prompt cache the one before it filled. Each is still judged on what it sent."""
    out, rows = score(tmp_path, "honest", "--repeats", "2", "-k", "Y")
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    first, second = rows[("Y", "performance", "rate=20.0", 0)], rows[("Y", "performance", "rate=20.0", 1)]
    assert first.status == second.status == "ok" and first.outputs["verdict"] == second.outputs["verdict"] == "pass"
    assert second.salt == f"{first.salt}.r1" and rows[("Y", "accuracy", None, 0)].salt == first.salt


def test_a_later_round_measures_its_repeat_alone_under_that_repeats_salt(tmp_path):
    """`--first-repeat 1` (a later round of `compare --rounds`): only the repeated cells run, as repeat
    1, salted as repeat 1 of the run's salt, and still judged; accuracy was the first round's."""
    out, rows = score(tmp_path, "honest", "--first-repeat", "1", "--salt", "5a17c0de", "-k", "Y")
    assert out.returncode == 0 and "deselected" in out.stdout, (out.stdout + out.stderr)[-3000:]
    assert rows and {kind for (_, kind, _, _) in rows} == {"performance"}, sorted(rows)
    assert {r.repeat for r in rows.values()} == {1} and {r.salt for r in rows.values()} == {"5a17c0de.r1"}
    assert all(r.status == "ok" and r.outputs["verdict"] == "pass" for r in rows.values())
