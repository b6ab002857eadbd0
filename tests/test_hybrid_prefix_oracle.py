"""Setting C's oracle, scored as a user would (pytest scenarios/ with --stack), passes an honest
cache and FAILS the broken or cheating ones: a cache that restores a wrong state, one that restores
its snapshot without copying it, one that reports hits it never used, one that keeps its cache
across a claimed reset. The stacks are test doubles (tests/stacks/hybrid_double.py) serving the
real tiny olmo_hybrid through transformers, with the fault put in on purpose."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.row import read_rows

REPO = Path(__file__).resolve().parent.parent
MODULE = "scenarios/test_hybrid_prefix_caching.py"
pytestmark = pytest.mark.slow


def score(tmp_path: Path, mode: str, *select: str) -> tuple[subprocess.CompletedProcess, list]:
    spec = yaml.safe_load((REPO / "tests" / "stacks" / "hybrid_double.yaml").read_text())
    spec["name"] = f"hybrid-{mode}"
    spec["command"] = [*spec["command"][:-1], mode]
    path = tmp_path / f"hybrid-{mode}.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = subprocess.run([sys.executable, "-m", "pytest", MODULE, *select, "-p", "no:cacheprovider", "-q",
                          "--profile", "smoke", "--results-dir", str(tmp_path), "--stack", str(path),
                          "--no-leaderboard", "--salt", "c0ffee01"],  # one salt: references computed once
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    return out, read_rows(tmp_path)


def _one(rows, kind: str):
    found = [r for r in rows if r.kind == kind]
    assert len(found) == 1, [(r.kind, r.status) for r in rows]
    return found[0]


def test_an_honest_hybrid_cache_passes_with_hits_on_the_shared_prefix(tmp_path):
    out, rows = score(tmp_path, "honest")
    assert out.returncode == 0 and "2 passed" in out.stdout, (out.stdout + out.stderr)[-3000:]
    acc, cell = _one(rows, "accuracy"), _one(rows, "performance")
    assert acc.accuracy["lossless"]["verdict"] == "pass" and acc.engagement["verdict"] == "pass"
    assert cell.status == "ok" and cell.engagement["verdict"] == "pass"
    assert cell.metrics["prefix_hit_rate"] > 0.8  # 1024 of 1152 prompt tokens shared (minus the cache's grid)
    judged = {p["prompt_id"] for p in cell.outputs["prompts"]}
    assert any(" vs reset" in p for p in judged) and any("hits used" in p for p in judged), judged


@pytest.mark.parametrize("mode", ["stale", "inplace"])
def test_a_cache_that_restores_a_wrong_state_fails_the_cell_and_the_radix_cases(tmp_path, mode):
    out, rows = score(tmp_path, mode)
    assert out.returncode == 1 and "Traceback" not in out.stdout, out.stdout[-3000:]
    acc, cell = _one(rows, "accuracy"), _one(rows, "performance")
    assert acc.status == "failed" and acc.accuracy["lossless"]["verdict"] == "fail", acc.accuracy["summary"]
    assert cell.status == "failed" and "measured outputs" in cell.error, cell.error
    failed = [p for p in cell.outputs["prompts"] if not p["ok"]]
    # wrong against the reference and against its own cold-cache replay
    assert any(" vs reset" in p["prompt_id"] for p in failed) and any(
        " vs reset" not in p["prompt_id"] for p in failed), failed


def test_hits_reported_but_not_used_fail_the_cell(tmp_path):
    out, rows = score(tmp_path, "fake-hits", "-k", "performance")
    assert out.returncode == 1, out.stdout[-3000:]
    cell = _one(rows, "performance")
    assert cell.status == "failed" and "hits were not used" in cell.error, cell.error
    assert cell.engagement["verdict"] == "pass"  # the counters alone would have believed it


def test_a_cache_kept_across_a_claimed_reset_fails_the_cell(tmp_path):
    out, rows = score(tmp_path, "ignores-reset", "-k", "performance")
    assert out.returncode == 1, out.stdout[-3000:]
    cell = _one(rows, "performance")
    assert cell.status == "failed" and "claimed, not done" in cell.error, cell.error


def test_other_tokens_after_a_near_tie_fail_where_the_token_match_alone_passes(tmp_path):
    out, rows = score(tmp_path, "tie-then-junk", "-k", "accuracy")
    assert out.returncode == 1 and "Traceback" not in out.stdout, out.stdout[-3000:]
    acc = _one(rows, "accuracy")
    assert acc.status == "failed" and acc.accuracy["lossless"]["verdict"] == "pass"  # the same junk, cache on or off
    reference = acc.accuracy["reference"]
    assert reference["verdict"] == "fail", reference["summary"]
    failed = [p for p in reference["prompts"] if not p["ok"]]
    assert failed and all(p["diverged_at"] == 3 and p["reason"].startswith("near-tie at token 3") for p in failed)
    assert all("outside the reference's top-" in p["reason"] for p in failed), failed
