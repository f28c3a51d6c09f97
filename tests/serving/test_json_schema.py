"""The JSON Schema subset that checks structured replies, and how JSON is found in a reply."""

from __future__ import annotations

from typing import Any

import pytest

from agent_sleep.serving.json_schema import SchemaError, check_schema, schema_errors
from agent_sleep.serving.structured import BadReply, extract_json

# What pydantic's model_json_schema() emits for a nested model with an enum, an optional field and a list.
ORDER = {
    "$defs": {
        "Item": {
            "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-\\d+$"},
                           "qty": {"type": "integer", "minimum": 1}},
            "required": ["sku", "qty"], "type": "object", "additionalProperties": False,
        },
        "Status": {"enum": ["open", "shipped"], "type": "string"},
    },
    "properties": {
        "id": {"type": "integer"},
        "status": {"$ref": "#/$defs/Status"},
        "items": {"items": {"$ref": "#/$defs/Item"}, "type": "array", "minItems": 1},
        "note": {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "null"}], "default": None},
    },
    "required": ["id", "status", "items"],
    "type": "object",
}
GOOD_ORDER = {"id": 7, "status": "open", "items": [{"sku": "ABC-1", "qty": 2}], "note": None}


@pytest.mark.parametrize(("change", "error"), [
    ({"id": True}, "$.id: expected integer, got boolean"),
    ({"id": 7.5}, "$.id: expected integer, got number"),
    ({"status": "lost"}, "$.status: must be one of ['open', 'shipped'], got 'lost'"),
    ({"items": []}, "$.items: fewer than 1 items"),
    ({"items": [{"sku": "abc", "qty": 2}]}, "$.items[0].sku: does not match pattern"),
    ({"items": [{"sku": "ABC-1", "qty": 0}]}, "$.items[0].qty: 0 is less than 1 (minimum)"),
    ({"items": [{"sku": "ABC-1", "qty": 1, "gift": True}]}, "$.items[0]: unexpected property 'gift'"),
    ({"note": "far too long a note"}, "$.note: matches none of the anyOf alternatives"),
    ({"status": None}, "$.status: expected string, got null"),
])
def test_each_rule_names_the_path(change: dict[str, Any], error: str) -> None:
    assert schema_errors(GOOD_ORDER, ORDER) == []
    assert schema_errors({"id": 7.0, "status": "shipped", "items": [{"sku": "XYZ-12", "qty": 1}]}, ORDER) == []
    errors = schema_errors({**GOOD_ORDER, **change}, ORDER)
    assert len(errors) == 1 and errors[0].startswith(error), errors


def test_missing_and_combined_rules() -> None:
    assert schema_errors({}, ORDER) == [f"$: missing required property {p!r}" for p in ("id", "status", "items")]
    assert schema_errors("x", {"type": ["integer", "null"]}) == ["$: expected integer or null, got string"]
    assert schema_errors(3, {"oneOf": [{"type": "integer"}, {"minimum": 0}]}) == [
        "$: must match exactly one oneOf alternative, matches 2"]
    assert schema_errors(4, {"multipleOf": 3, "not": {"const": 4}}) == [
        "$: must not match the 'not' schema", "$: 4 is not a multiple of 3"]
    assert schema_errors([1, "a", "b"], {"prefixItems": [{"type": "integer"}], "items": {"type": "string"}}) == []
    assert schema_errors({"a": 1}, {"additionalProperties": {"type": "string"}}) == ["$.a: expected string, got integer"]
    assert schema_errors(1, {"const": True}) == ["$: must be True"]  # JSON true is not 1
    assert schema_errors(1, False) == ["$: no value is allowed here"] and schema_errors(1, True) == []
    assert len(schema_errors(list(range(20)), {"items": {"type": "string"}})) == 5  # capped


def test_check_schema_rejects_what_cannot_be_used() -> None:
    check_schema(ORDER)
    with pytest.raises(SchemaError, match="schema.properties.a must be a JSON schema object"):
        check_schema({"properties": {"a": "string"}})
    with pytest.raises(SchemaError, match="does not resolve"):
        check_schema({"items": {"$ref": "#/$defs/Missing"}})
    with pytest.raises(SchemaError, match="only local references"):
        check_schema({"$ref": "https://example.com/schema.json"})
    with pytest.raises(SchemaError, match="must be a JSON schema object"):
        check_schema([{"type": "string"}])


def test_extract_json_finds_the_value() -> None:
    assert extract_json(' {"a": 1} ') == {"a": 1}
    assert extract_json('```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    assert extract_json('Sure! Here it is: {"a": 1} Hope that helps.') == {"a": 1}
    assert extract_json('"just a string"') == "just a string"
    assert extract_json("a {broken then [1, 2]") == [1, 2]
    for text in ("", "   ", "no json at all", '{"a": '):
        with pytest.raises(BadReply):
            extract_json(text)
