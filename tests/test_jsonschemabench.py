"""Setting E's paper profile reads JSONSchemaBench from a local copy (a dataset folder in the
layout of the hub's, read by `datasets`, never fetched): rows become tasks of their subset, the
sentinel goes in a plain required string field, or anywhere in the text where the schema has none;
a missing copy is one line."""
import json

import pytest

from harness.errors import HarnessError
from scenarios.workloads.json_schema import draw_tasks, judge_output, load_bench, profile_tasks

SCHEMAS = [
    {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}, "title": {"type": "string"}},
     "required": ["id", "title"]},
    {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    {"type": "array", "items": {"type": "string"}},
]


@pytest.fixture
def local_copy(tmp_path):
    (tmp_path / "full").mkdir()
    rows = [{"json_schema": json.dumps(s), "unique_id": f"o{i}"} for i, s in enumerate(SCHEMAS)]
    (tmp_path / "full" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: full\n  data_files:\n"
                                         "  - split: val\n    path: full/val.jsonl\n---\n")
    return tmp_path


def test_rows_become_tasks_with_a_sentinel_field_where_there_is_one(local_copy):
    tasks = load_bench(str(local_copy), "full", "val")
    assert [t.id for t in tasks] == ["o0", "o1", "o2"] and {t.kind for t in tasks} == {"full"}
    assert tasks[0].sentinel_field == "/title"  # id has a format: the sentinel could not be valid there
    assert tasks[1].sentinel_field == "" and tasks[2].sentinel_field == ""
    assert "{sentinel}" in tasks[0].task and "'title'" in tasks[0].task
    assert len(draw_tasks(tasks, 2, seed=1)) == 2


def test_a_schema_without_a_field_finds_the_sentinel_anywhere_in_the_text(local_copy):
    task = load_bench(str(local_copy), "full", "val")[2]
    sentinel = task.sentinel("s")
    assert judge_output(task, sentinel, json.dumps(["a", sentinel]), "stop").detail["sentinel"]
    assert not judge_output(task, sentinel, json.dumps(["a"]), "stop").detail["sentinel"]
    assert not judge_output(task, sentinel, json.dumps({"a": 1}), "stop").ok  # still judged by the schema


def test_the_profile_picks_the_pool(local_copy):
    assert len(profile_tasks({"schemas": None})) == 66
    assert len(profile_tasks({"schemas": {"path": str(local_copy), "subset": "full", "split": "val"}})) == 3


def test_a_missing_copy_is_one_line(tmp_path):
    with pytest.raises(HarnessError, match="cannot read JSONSchemaBench"):
        load_bench(str(tmp_path / "nowhere"), "full", "val")
