"""Setting E's oracle, scored as a user would (pytest scenarios/ with --stack), passes an honest
constrained decoder and FAILS the wrong ones: valid JSON that is not this request's answer, a
server that ignores the schema, a jump-forward path that changes the text. The stacks are test
doubles (tests/stacks/schema_double.py) serving the real SmolLM2-135M-Instruct through
transformers, each with one fault put in on purpose; they are scored in one run, so the
references are computed once."""

import pytest

from tests.doubles import double, score

MODULE = "scenarios/test_json_schema_decoding.py"
# mode -> whether the double claims jump_forward (then it is also relaunched with it off, for the
# lossless check); the two that fail on their outputs need not
MODES = {"honest": True, "other-valid": False, "ignores": False, "fast-path": True}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    specs = []
    for mode, claims in MODES.items():
        spec = double("schema_double.yaml", f"schema-{mode}", mode)
        spec["supports"] = [s for s in spec["supports"] if claims or s != "jump_forward"]
        if not claims:
            spec.pop("off_switch")  # a switch for a feature it does not declare is refused
        specs.append(spec)
    return score(tmp_path_factory.mktemp("schema-oracle"), MODULE, specs, timeout=2400)


def _parts(row) -> dict:
    return {name: part["verdict"] for name, part in row.outputs["parts"].items()}


def test_an_honest_constrained_decoder_passes(scored):
    out, rows = scored
    assert "Traceback" not in out.stdout, out.stdout[-3000:]
    acc, cell = rows["schema-honest"]["accuracy"], rows["schema-honest"]["performance"]
    assert acc.status == "ok", acc.accuracy["summary"]
    assert acc.accuracy["lossless"]["verdict"] == "pass" and acc.accuracy["outputs_judged"]["valid_rate"] == 1.0
    assert acc.engagement["verdict"] == "pass"  # forced tokens counted
    assert cell.status == "ok" and _parts(cell) == {"schema": "pass", "reference": "pass"}, cell.error


def test_valid_json_that_is_not_this_requests_answer_fails(scored):
    _, rows = scored
    acc, cell = rows["schema-other-valid"]["accuracy"], rows["schema-other-valid"]["performance"]
    assert acc.status == "failed" and acc.accuracy["reference"]["verdict"] == "fail", acc.accuracy["summary"]
    assert acc.accuracy["outputs_judged"]["valid_rate"] == 1.0  # the schema alone cannot tell
    assert cell.status == "failed" and _parts(cell) == {"schema": "pass", "reference": "fail"}, cell.error


def test_a_server_that_ignores_the_schema_fails(scored):
    _, rows = scored
    acc, cell = rows["schema-ignores"]["accuracy"], rows["schema-ignores"]["performance"]
    assert "outputs_judged" in acc.accuracy, f"its outputs were not judged: {acc.error or acc.accuracy['summary']}"
    assert acc.status == "failed" and acc.accuracy["outputs_judged"]["verdict"] == "fail", acc.accuracy["summary"]
    assert acc.accuracy["outputs_judged"]["valid_rate"] < 0.95
    assert cell.status == "failed" and _parts(cell)["schema"] == "fail", cell.error
    assert "valid" in cell.error


def test_a_fast_path_that_changes_the_text_fails_the_lossless_check(scored):
    _, rows = scored
    acc = rows["schema-fast-path"]["accuracy"]
    assert acc.status == "failed" and acc.accuracy["lossless"]["verdict"] == "fail", acc.accuracy["summary"]
    assert acc.accuracy["outputs_judged"]["valid_rate"] == 1.0  # valid JSON all the same
    assert "--no-jump-forward" in acc.accuracy["lossless"]["off"]
