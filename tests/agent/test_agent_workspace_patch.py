"""The workspace's git history, rollbacks that keep the memory files, and patches that may not escape."""
from __future__ import annotations

import os

import pytest

from agent import integrity
from agent.patch import FileEdit, Patch, PatchRejected, apply, problems
from agent.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    w = Workspace.create(tmp_path / "run")
    w.write("main.py", "v1\n")
    w.write("progress.md", "- started\n")
    w.commit("setup")
    w.tag("round-0")
    return w


def test_rollback_resets_the_stack_and_keeps_the_memory(ws):
    ws.write("main.py", "v2\n")
    ws.write("extra.py", "new\n")
    ws.write("progress.md", "- started\n- tried v2\n")
    ws.commit("attempt")
    ws.rollback("round-0", "rollback")
    assert ws.read("main.py") == "v1\n" and not ws.path("extra.py").exists()
    assert "tried v2" in ws.read("progress.md")
    assert ws.log()[0].endswith("rollback") and ws.tag_sha("round-0")


def test_stack_files_leave_out_the_records(ws):
    ws.write("results/runs/x.json", "{}")
    assert ws.stack_files() == ["main.py"]


@pytest.mark.parametrize("path", ["../../scenarios/standard_serving.yaml", "harness/oracle.py", "/etc/passwd",
                                  "scenarios/test_standard_serving.py", "conftest.py", "rounds.json", ".git/config",
                                  "sub/../../x.py"])
def test_patches_outside_the_stack_are_rejected(ws, path):
    patch = Patch((FileEdit("main.py", "ok\n"), FileEdit(path, "hacked")))
    assert problems(patch, ws)
    with pytest.raises(PatchRejected):
        apply(patch, ws)
    assert ws.read("main.py") == "v1\n"  # nothing written, not even the allowed file


def test_a_link_out_of_the_workspace_is_rejected(ws, tmp_path):
    os.symlink(tmp_path, ws.path("out"))
    assert problems(Patch((FileEdit("out/x.py", "x"),)), ws)


def test_a_valid_patch_writes_and_deletes(ws):
    apply(Patch((FileEdit("pkg/engine.py", "E\n"), FileEdit("main.py", None))), ws)
    assert ws.read("pkg/engine.py") == "E\n" and not ws.path("main.py").exists()


def test_integrity_sees_any_change_to_the_instrument(tmp_path):
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "oracle.py").write_text("def judge(): ...\n")
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "a.yaml").write_text("x: 1\n")
    (tmp_path / "conftest.py").write_text("")
    snap = integrity.snapshot(tmp_path)
    assert integrity.check(snap) == []
    (tmp_path / "harness" / "__pycache__").mkdir()
    (tmp_path / "harness" / "__pycache__" / "oracle.cpython-311.pyc").write_bytes(b"x")
    assert integrity.check(snap) == []  # bytecode caches are not the instrument
    (tmp_path / "harness" / "oracle.py").write_text("def judge(): return True\n")
    (tmp_path / "scenarios" / "conftest.py").write_text("# injected\n")
    assert integrity.check(snap) == ["modified harness/oracle.py", "added scenarios/conftest.py"]
    assert integrity.check(integrity.Snapshot.from_json(snap.to_json()))
