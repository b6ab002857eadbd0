"""Setting D's oracle, scored as a user would (pytest scenarios/ with --stack), passes an honest
streaming server and FAILS the broken or cheating ones: partials that drift from the transcript
of the audio received so far (a stale lookahead), reuse claimed but not done, chunks answered out
of order or twice, a message after the final. The stacks are test doubles
(tests/stacks/asr_double.py) serving the real tiny moonshine_streaming through transformers, each
with one fault put in on purpose; they are scored in one run, so the references are computed once."""

import pytest

from tests.doubles import double, score

MODULE = "scenarios/test_streaming_asr.py"
pytestmark = pytest.mark.slow
# mode -> whether the double claims an encoder cache (the honest double caches nothing, so it claims none)
MODES = {"honest": False, "drift": False, "fake-reuse": True, "reorder": False, "twice": False, "after-final": False}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    specs = [double("asr_double.yaml", f"asr-{mode}", mode,
                    supports=["audio_stream", "encoder_cache"] if claims else ["audio_stream"])
             for mode, claims in MODES.items()]
    return score(tmp_path_factory.mktemp("streaming-oracle"), MODULE, specs, timeout=1200)


def test_an_honest_server_passes(scored):
    out, rows = scored
    assert "Traceback" not in out.stdout, out.stdout[-3000:]
    acc, cell = rows["asr-honest"]["accuracy"], rows["asr-honest"]["performance"]
    assert acc.status == "ok" and acc.accuracy["verdict"] == "pass", acc.accuracy
    assert cell.status == "ok" and cell.outputs["verdict"] == "pass", cell.error
    assert cell.engagement is None  # claims no cache: measured, not guarded


def test_partials_that_drift_from_the_audio_so_far_fail(scored):
    _, rows = scored
    acc, cell = rows["asr-drift"]["accuracy"], rows["asr-drift"]["performance"]
    assert acc.status == "failed" and acc.accuracy["verdict"] == "fail", acc.accuracy
    assert cell.status == "failed" and "measured outputs" in cell.error, cell.error
    failed = {p["prompt_id"].rsplit("/", 1)[1].split("-")[0] for p in cell.outputs["prompts"] if not p["ok"]}
    assert failed == {"chunk"}, failed  # the finals are right: only the partials show it


def test_reuse_claimed_but_not_done_fails_the_cell(scored):
    _, rows = scored
    cell = rows["asr-fake-reuse"]["performance"]
    assert cell.status == "failed" and "saved nothing" in cell.error, cell.error
    assert cell.outputs["verdict"] == "pass"  # its transcripts are right: only the guard can tell


@pytest.mark.parametrize("mode", ["reorder", "twice"])
def test_chunks_answered_out_of_order_or_twice_fail(scored, mode):
    _, rows = scored
    cell = rows[f"asr-{mode}"]["performance"]
    assert cell.status == "failed", cell.error
    assert any(p["prompt_id"].endswith("/order") and not p["ok"] for p in cell.outputs["prompts"]), cell.outputs


def test_a_message_after_the_final_fails_the_streams(scored):
    _, rows = scored
    cell = rows["asr-after-final"]["performance"]
    assert cell.status == "failed" and "after the final" in (cell.error or ""), cell.error
