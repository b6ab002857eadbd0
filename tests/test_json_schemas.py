"""Lint for `scenarios/data/json_schemas.jsonl`, the schema set of setting E (JSON-schema constrained decoding).

What it proves, per schema and for the set as a whole:

- the set is big and varied: at least 66 entries with unique ids, at least 11 of each of the six kinds, and
  enough schemas using each feature (nesting, enums, bounded arrays, integer ranges, booleans, optional and
  nullable fields, patterns, formats);
- each schema is a valid Draft 2020-12 schema that keeps to a small keyword subset grammar engines compile
  reliably (no `$ref`, no combinators, no `number`), with only portable formats;
- everything is bounded: every string has `maxLength` (or is an `enum`/`const`), every array `maxItems`, every
  integer `minimum` and `maximum`, every object `additionalProperties: false`; hence the longest compact
  serialization of any valid instance is computable, and it is at most 256 characters, so a correct stack
  can finish any answer inside 256 tokens;
- the task text carries `{sentinel}` exactly once and names the field that must hold it, and that field
  (a JSON Pointer) is a plain string, required at every level, outside any array, long enough for the
  sentinel;
- each schema is satisfiable (a generated instance validates, format checks on), its sentinel field is
  really required, and no extra root property is accepted.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

DATA = Path(__file__).resolve().parent.parent / "scenarios" / "data" / "json_schemas.jsonl"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
KINDS = ("function_call", "github_config", "kubernetes", "analytics_event", "api_response", "store")
MAX_CHARS = 256
SENTINEL = "sx-0123abcd"  # the shape of a run's sentinel: "sx-" and 8 lowercase hex digits, 11 characters
ENTRY_KEYS = {"id", "kind", "task", "sentinel_field", "schema"}
KEYWORDS = {"$schema", "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
            "minLength", "maxLength", "pattern", "format", "enum", "const", "minimum", "maximum", "description",
            "title"}
TYPES = {"object", "array", "string", "integer", "boolean", "null"}
# One value per allowed format, used by the instance generator. `time` is left out on purpose: a bare
# jsonschema FormatChecker() checks it as "%H:%M:%S" (it rejects the RFC 3339 "12:30:00Z" that Draft 2020-12
# means and that grammar engines may emit) unless rfc3339-validator is installed, which flips the verdict,
# so an oracle could not judge it the same way everywhere.
FORMAT_VALUES = {"date": "2026-01-31", "email": "a@b.co", "ipv4": "10.0.0.1",
                 "uuid": "123e4567-e89b-12d3-a456-426614174000"}
PATTERN_CANDIDATES = ("a1", "v1.0.0", "1.0.0", "main")  # tried after "a" * minLength
# Minimum number of schemas showing each feature.
FEATURE_MINIMUMS = {"nested": 30, "enum": 30, "bounded_array": 25, "integer_range": 30, "boolean": 20,
                    "optional": 30, "nullable": 12, "pattern": 8, "format": 8}

Schema = dict[str, Any]
Entry = dict[str, Any]


def load_entries() -> list[Entry]:
    lines = DATA.read_text(encoding="ascii").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


ENTRIES = load_entries()
BY_ID = {entry["id"]: entry for entry in ENTRIES}


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def types_of(schema: Schema) -> list[str]:
    declared = schema.get("type", [])
    return [declared] if isinstance(declared, str) else list(declared)


def subschemas(schema: Schema, path: str = "#") -> Iterator[tuple[str, Schema]]:
    """Every schema inside `schema` (itself included) with a readable location."""
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from subschemas(prop, f"{path}/properties/{name}")
    if "items" in schema:
        yield from subschemas(schema["items"], f"{path}/items")


def object_depth(schema: Schema) -> int:
    """How many object schemas the deepest path from the root goes through (a flat object is 1)."""
    children = [*schema.get("properties", {}).values(), *([schema["items"]] if "items" in schema else [])]
    below = max((object_depth(child) for child in children), default=0)
    return below + (1 if "object" in types_of(schema) else 0)


def longest(schema: Schema) -> int:
    """An upper bound on the compact serialized length of any instance valid against `schema`.

    Strings count maxLength characters plus two quotes, one column per character: the bound leaves out
    escape sequences (a `\\"` or `\\u00e9` in a value), which these short, plain fields give no reason to use.
    Optional properties are counted as present.
    """
    if "const" in schema:
        return len(compact(schema["const"]))
    if "enum" in schema:
        return max(len(compact(member)) for member in schema["enum"])
    return max(_longest_of_type(schema, kind) for kind in types_of(schema))


def _longest_of_type(schema: Schema, kind: str) -> int:
    if kind == "object":
        members = [len(compact(name)) + 1 + longest(prop) for name, prop in schema["properties"].items()]
        return 2 + sum(members) + max(len(members) - 1, 0)
    if kind == "array":
        count = schema["maxItems"]
        return 2 + count * longest(schema["items"]) + max(count - 1, 0)
    if kind == "string":
        return schema["maxLength"] + 2
    if kind == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    if kind == "boolean":
        return len("false")
    if kind == "null":
        return len("null")
    raise AssertionError(f"no length bound for type {kind!r}")


def pointer_tokens(pointer: str) -> list[str]:
    """The reference tokens of an RFC 6901 JSON Pointer."""
    assert pointer.startswith("/"), f"{pointer!r} is not a JSON Pointer to a member"
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def string_value(schema: Schema) -> str:
    if "format" in schema:
        return FORMAT_VALUES[schema["format"]]
    minimum, maximum = max(schema.get("minLength", 0), 1), schema["maxLength"]
    pattern = schema.get("pattern")
    for candidate in ("a" * minimum, *PATTERN_CANDIDATES):
        if minimum <= len(candidate) <= maximum and (pattern is None or re.search(pattern, candidate)):
            return candidate
    raise AssertionError(f"no generator candidate fits pattern {pattern!r} with lengths {minimum}..{maximum}")


def minimal_value(schema: Schema) -> object:
    """The smallest instance the generator knows for `schema`: required properties only."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = next(kind for kind in types_of(schema) if kind != "null")
    if kind == "object":
        return {name: minimal_value(schema["properties"][name]) for name in schema.get("required", [])}
    if kind == "array":
        return [minimal_value(schema["items"]) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return string_value(schema)
    if kind == "integer":
        return schema["minimum"]
    if kind == "boolean":
        return True
    raise AssertionError(f"no generator for type {kind!r}")


def example(schema: Schema, sentinel: str, pointer: str) -> dict[str, Any]:
    """A minimal instance of `schema` with `sentinel` at `pointer`."""
    instance = minimal_value(schema)
    assert isinstance(instance, dict)
    *parents, last = pointer_tokens(pointer)
    target = instance
    for token in parents:
        target = target[token]
    target[last] = sentinel
    return instance


def instance_for(schema_id: str) -> dict[str, Any]:
    """The generated instance of one entry, with the schema id in any generator failure."""
    entry = BY_ID[schema_id]
    try:
        return example(entry["schema"], SENTINEL, entry["sentinel_field"])
    except (AssertionError, KeyError, StopIteration) as error:
        raise AssertionError(f"{schema_id}: cannot generate an instance: {error!r}") from error


def without(instance: dict[str, Any], pointer: str) -> dict[str, Any]:
    """A copy of `instance` with the member at `pointer` removed."""
    copy = json.loads(json.dumps(instance))
    *parents, last = pointer_tokens(pointer)
    target = copy
    for token in parents:
        target = target[token]
    del target[last]
    return copy


def validator(schema: Schema) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=FormatChecker())


# Feature predicates over a whole schema, for the counts.
def _any(test: Callable[[Schema], bool]) -> Callable[[Schema], bool]:
    return lambda schema: any(test(sub) for _, sub in subschemas(schema))


FEATURES: dict[str, Callable[[Schema], bool]] = {
    "nested": lambda schema: object_depth(schema) >= 2,
    "enum": _any(lambda sub: "enum" in sub),
    "bounded_array": _any(lambda sub: "array" in types_of(sub) and "minItems" in sub and "maxItems" in sub),
    "integer_range": _any(lambda sub: "integer" in types_of(sub) and "minimum" in sub and "maximum" in sub),
    "boolean": _any(lambda sub: "boolean" in types_of(sub)),
    "optional": _any(lambda sub: bool(set(sub.get("properties", {})) - set(sub.get("required", [])))),
    "nullable": _any(lambda sub: "null" in types_of(sub) and len(types_of(sub)) > 1),
    "pattern": _any(lambda sub: "pattern" in sub),
    "format": _any(lambda sub: "format" in sub),
}


def feature_counts() -> dict[str, int]:
    return {name: sum(test(entry["schema"]) for entry in ENTRIES) for name, test in FEATURES.items()}


# The set as a whole.
def test_entry_count_and_unique_ids() -> None:
    ids = Counter(entry["id"] for entry in ENTRIES)
    assert len(ENTRIES) >= 66, f"only {len(ENTRIES)} schemas, want at least 66"
    assert not [name for name, n in ids.items() if n > 1], f"duplicate ids: {[n for n, c in ids.items() if c > 1]}"


def test_every_kind_is_well_represented() -> None:
    kinds = Counter(entry["kind"] for entry in ENTRIES)
    assert set(kinds) == set(KINDS), f"kinds {sorted(kinds)} differ from {sorted(KINDS)}"
    thin = {kind: n for kind, n in kinds.items() if n < 11}
    assert not thin, f"kinds with fewer than 11 schemas: {thin}"


@pytest.mark.parametrize("feature", sorted(FEATURE_MINIMUMS))
def test_feature_is_spread_across_the_set(feature: str) -> None:
    having = feature_counts()[feature]
    assert having >= FEATURE_MINIMUMS[feature], \
        f"only {having} schemas use {feature}, want at least {FEATURE_MINIMUMS[feature]}"


# One schema at a time.
IDS = sorted(BY_ID)


@pytest.mark.parametrize("schema_id", IDS)
def test_entry_shape(schema_id: str) -> None:
    entry = BY_ID[schema_id]
    assert set(entry) == ENTRY_KEYS, f"{schema_id}: keys {sorted(entry)} differ from {sorted(ENTRY_KEYS)}"
    assert entry["kind"] in KINDS, f"{schema_id}: unknown kind {entry['kind']!r}"
    assert re.fullmatch(rf"{entry['kind']}-\d{{2}}", schema_id), f"{schema_id}: id is not <kind>-<nn>"


@pytest.mark.parametrize("schema_id", IDS)
def test_schema_is_valid_draft_2020_12(schema_id: str) -> None:
    schema = BY_ID[schema_id]["schema"]
    assert schema.get("$schema") == DRAFT, f"{schema_id}: $schema is not {DRAFT}"
    assert types_of(schema) == ["object"], f"{schema_id}: the root is not `type: object`"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("schema_id", IDS)
def test_schema_keeps_to_the_compilable_subset(schema_id: str) -> None:
    for where, sub in subschemas(BY_ID[schema_id]["schema"]):
        extra = set(sub) - KEYWORDS
        assert not extra, f"{schema_id} {where}: keywords outside the allow-list: {sorted(extra)}"
        assert where == "#" or "$schema" not in sub, f"{schema_id} {where}: $schema below the root"
        assert "type" in sub or "enum" in sub or "const" in sub, f"{schema_id} {where}: no type, enum or const"
        odd = set(types_of(sub)) - TYPES
        assert not odd, f"{schema_id} {where}: types {sorted(odd)} not allowed (use bounded integers for numbers)"
        if "format" in sub:
            assert sub["format"] in FORMAT_VALUES, f"{schema_id} {where}: format {sub['format']!r} not allowed"


@pytest.mark.parametrize("schema_id", IDS)
def test_everything_is_bounded(schema_id: str) -> None:
    for where, sub in subschemas(BY_ID[schema_id]["schema"]):
        kinds = types_of(sub)
        closed = "enum" in sub or "const" in sub
        if "string" in kinds and not closed:
            assert "maxLength" in sub, f"{schema_id} {where}: string without maxLength"
        if "integer" in kinds and not closed:
            assert "minimum" in sub and "maximum" in sub, f"{schema_id} {where}: integer without minimum/maximum"
        if "array" in kinds:
            assert "maxItems" in sub and "items" in sub, f"{schema_id} {where}: array without maxItems or items"
        if "object" in kinds:
            assert sub.get("additionalProperties") is False, \
                f"{schema_id} {where}: object without additionalProperties: false"
            assert "properties" in sub, f"{schema_id} {where}: object without explicit properties"
            unknown = set(sub.get("required", [])) - set(sub["properties"])
            assert not unknown, f"{schema_id} {where}: required names no property: {sorted(unknown)}"


@pytest.mark.parametrize("schema_id", IDS)
def test_longest_instance_fits_in_256_characters(schema_id: str) -> None:
    size = longest(BY_ID[schema_id]["schema"])
    assert size <= MAX_CHARS, f"{schema_id}: the longest valid instance has {size} characters, over {MAX_CHARS}"


@pytest.mark.parametrize("schema_id", IDS)
def test_task_asks_for_the_sentinel_once(schema_id: str) -> None:
    entry = BY_ID[schema_id]
    task = entry["task"]
    assert task.count("{sentinel}") == 1, f"{schema_id}: the task must hold {{sentinel}} exactly once"
    rest = task.replace("{sentinel}", "")
    assert "{" not in rest and "}" not in rest, f"{schema_id}: the task has braces besides {{sentinel}}"
    field = pointer_tokens(entry["sentinel_field"])[-1]
    assert field in task, f"{schema_id}: the task does not name the sentinel field {field!r}"


@pytest.mark.parametrize("schema_id", IDS)
def test_sentinel_field_is_a_required_plain_string(schema_id: str) -> None:
    entry = BY_ID[schema_id]
    where = entry["sentinel_field"]
    node = entry["schema"]
    for token in pointer_tokens(where):
        assert types_of(node) == ["object"], f"{schema_id}: {where} passes through a non-object (or nullable) node"
        assert token in node["properties"], f"{schema_id}: {where} names no property {token!r}"
        assert token in node.get("required", []), f"{schema_id}: {where} goes through optional {token!r}"
        node = node["properties"][token]
    assert types_of(node) == ["string"], f"{schema_id}: {where} is not a plain (non-nullable) string"
    blocking = {"pattern", "format", "enum", "const"} & set(node)
    assert not blocking, f"{schema_id}: {where} has {sorted(blocking)}, which could refuse the sentinel"
    assert node.get("minLength", 0) <= len(SENTINEL) <= node["maxLength"], \
        f"{schema_id}: {where} cannot hold an {len(SENTINEL)}-character sentinel"


@pytest.mark.parametrize("schema_id", IDS)
def test_generated_instance_validates(schema_id: str) -> None:
    entry = BY_ID[schema_id]
    instance = instance_for(schema_id)
    errors = [error.message for error in validator(entry["schema"]).iter_errors(instance)]
    assert not errors, f"{schema_id}: generated instance {compact(instance)} is invalid: {errors}"


@pytest.mark.parametrize("schema_id", IDS)
def test_sentinel_field_is_required(schema_id: str) -> None:
    entry = BY_ID[schema_id]
    instance = instance_for(schema_id)
    assert not validator(entry["schema"]).is_valid(without(instance, entry["sentinel_field"])), \
        f"{schema_id}: the instance stays valid without {entry['sentinel_field']}"


@pytest.mark.parametrize("schema_id", IDS)
def test_extra_root_property_is_refused(schema_id: str) -> None:
    entry = BY_ID[schema_id]
    instance = instance_for(schema_id)
    instance["zz_unexpected"] = 1
    assert not validator(entry["schema"]).is_valid(instance), f"{schema_id}: an extra root property is accepted"
