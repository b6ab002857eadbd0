"""Setting B's workload: the bug injector and the dataset built from the standard library."""
from __future__ import annotations

import ast
import json
import platform

import pytest

from scenarios.workloads import code_edit
from scenarios.workloads.code_edit import (
    BUG_KINDS,
    BuildParams,
    build_items,
    candidate_edits,
    dataset_dir,
    ensure_dataset,
    extract_code,
    inject,
    similarity,
    valid_bug,
)

SOURCE = '''\
def clamp(values, low, high):
    """Keep each value inside [low, high]."""
    out = []
    for v in values:  # a comment the edit must leave alone
        if v < low:
            out.append(low)
        elif v > high and high >= 0:
            out.append(high)
        else:
            out.append(v + 0)
    while not out:
        out.append(low * 2)
    return out
'''

SMALL = BuildParams(min_lines=12, max_lines=30, items=24, heldout=8, seed=3)


@pytest.mark.parametrize("kind", BUG_KINDS)
def test_each_kind_gives_valid_python_that_means_something_else(kind):
    edits = candidate_edits(SOURCE)[kind]
    assert edits, f"no {kind} site found"
    for edit in edits:
        buggy = edit.apply(SOURCE)
        ast.parse(buggy)
        assert valid_bug(SOURCE, buggy), (kind, edit)
        # one place changed: everything outside the edit is byte-identical
        assert buggy[: edit.start] == SOURCE[: edit.start]
        assert buggy[edit.start + len(edit.text):] == SOURCE[edit.end:]
        assert "# a comment the edit must leave alone" in buggy


def test_the_kinds_are_what_they_say():
    sites = candidate_edits(SOURCE)
    assert {e.note for e in sites["swapped_operator"]} >= {"< -> <=", "> -> >=", "and -> or", "+ -> -"}
    notes = [e.note for e in sites["off_by_one"]]  # 0 twice (`high >= 0`, `v + 0`), then 2 moved by one
    assert notes[:2] == ["0 -> 1", "0 -> 1"] and notes[2] in ("2 -> 1", "2 -> 3") and len(notes) == 3
    assert all(e.text in {"values", "low", "high", "out", "v"} for e in sites["wrong_name"])
    notes = [e.note for e in sites["negated_condition"]]
    assert "removed `not`" in notes and notes.count("negated the condition") == 2
    buggy, _ = inject(SOURCE, "negated_condition", "k")
    assert buggy != SOURCE and valid_bug(SOURCE, buggy)


def test_injection_is_deterministic_and_keyed():
    assert inject(SOURCE, "wrong_name", "seed-1") == inject(SOURCE, "wrong_name", "seed-1")
    picks = {inject(SOURCE, "wrong_name", f"seed-{i}")[1] for i in range(20)}
    assert len(picks) > 1  # the key moves the site


def test_items_are_deterministic_balanced_and_well_formed():
    a, b = build_items(SMALL), build_items(SMALL)
    assert a == b and len(a) == SMALL.items
    assert len({i["id"] for i in a}) == len(a)
    counts = {k: sum(1 for i in a if i["kind"] == k) for k in BUG_KINDS}
    assert all(n >= 3 for n in counts.values()), counts
    for item in a:
        assert item["prediction"] == item["buggy"] != item["gold"]
        assert valid_bug(item["gold"], item["buggy"])
        assert item["prompt"].startswith("```python\n" + item["buggy"]) and "exactly one bug" in item["prompt"]
        assert SMALL.min_lines <= item["lines"] <= SMALL.max_lines
    assert build_items(BuildParams(**{**SMALL.__dict__, "seed": 4})) != a


def test_the_dataset_is_saved_reloaded_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEBENCH_CACHE", str(tmp_path))
    splits = ensure_dataset(SMALL)
    assert [len(splits["heldout"]), len(splits["tune"])] == [8, 16]
    assert not {i["id"] for i in splits["heldout"]} & {i["id"] for i in splits["tune"]}
    path = dataset_dir(SMALL)
    assert f"py{platform.python_version()}" in path.name
    meta = json.loads((path / "meta.json").read_text())
    assert meta["python"] == platform.python_version() and meta["params"]["seed"] == 3

    built = []
    real_build = code_edit.build_items
    monkeypatch.setattr(code_edit, "build_items", lambda *a, **k: built.append(1) or real_build(*a, **k))
    assert ensure_dataset(SMALL) == splits and not built  # cached
    next(path.glob("heldout/*.arrow")).write_bytes(b"garbage")
    assert ensure_dataset(SMALL) == splits and built == [1]  # corrupted: rebuilt, same content
    (path / "meta.json").unlink()
    assert ensure_dataset(SMALL) == splits and built == [1, 1]  # partial: rebuilt


def test_similarity_reads_the_code_out_of_a_fenced_reply():
    reply = "Here it is:\n```python\ndef f():\n    return 1\n```\nDone."
    assert extract_code(reply) == "def f():\n    return 1\n"
    assert similarity(reply, "def f():\n    return 1\n") == 1.0
    assert similarity("nothing like it", "def f():\n    return 1\n") < 0.5
