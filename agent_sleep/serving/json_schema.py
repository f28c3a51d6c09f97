"""A small JSON Schema validator for the subset that structured-output schemas use.

It covers what OpenAI structured outputs and pydantic's ``model_json_schema``
emit: ``type`` (one or a list), ``enum``, ``const``, ``properties`` /
``required`` / ``additionalProperties``, ``items`` / ``prefixItems`` /
``minItems`` / ``maxItems``, ``minLength`` / ``maxLength`` / ``pattern``,
``minimum`` / ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum`` /
``multipleOf``, ``anyOf`` / ``oneOf`` / ``allOf`` / ``not``, and local ``$ref``
(``#/$defs/...``, ``#/definitions/...``). Other keywords (``format``,
``title``, ``description``, ``default``...) are annotations and are ignored,
as JSON Schema allows.

Deliberately not a full implementation: no remote references, no
``if``/``then``/``else``, ``patternProperties`` or ``dependentSchemas``. The
``jsonschema`` package is not a dependency; this is enough to check a model's
reply against the schema a client asked for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from agent_sleep.errors import InvalidInputError

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "additionalProperties", "not")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")


class SchemaError(InvalidInputError):
    """A schema this validator cannot use (not an object, an unresolvable ``$ref``)."""


def check_schema(schema: Any) -> None:
    """Raise :class:`SchemaError` unless ``schema`` is a usable schema (every subschema an object, every ``$ref`` local and resolvable)."""
    for where, sub in _walk(schema, "schema"):
        if isinstance(sub, bool):
            continue
        if not isinstance(sub, dict):
            raise SchemaError(f"{where} must be a JSON schema object, not {type(sub).__name__}")
        ref = sub.get("$ref")
        if ref is not None:
            _resolve(schema, ref, where)


def schema_errors(value: Any, schema: dict[str, Any] | bool, *, limit: int = 5) -> list[str]:
    """Why ``value`` does not match ``schema`` (empty when it does), at most ``limit`` messages, each with a ``$.path``."""
    errors: list[str] = []
    _validate(value, schema, schema, "$", errors, limit)
    return errors[:limit]


# ---------------------------------------------------------------- internals


def _walk(schema: Any, where: str) -> Iterator[tuple[str, Any]]:
    yield where, schema
    if not isinstance(schema, dict):
        return
    for key in _SUBSCHEMA_LISTS:
        subs = schema.get(key)
        if isinstance(subs, list):
            for i, sub in enumerate(subs):
                yield from _walk(sub, f"{where}.{key}[{i}]")
        elif subs is not None:
            yield f"{where}.{key}", subs  # reported as "must be a JSON schema object" unless it is a list
    for key in _SUBSCHEMA_ONE:
        if key in schema and not (key == "items" and isinstance(schema[key], list)):
            yield from _walk(schema[key], f"{where}.{key}")
    for key in _SUBSCHEMA_MAPS:
        subs = schema.get(key)
        if isinstance(subs, dict):
            for name, sub in subs.items():
                yield from _walk(sub, f"{where}.{key}.{name}")


def _resolve(root: Any, ref: Any, where: str) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise SchemaError(f"{where}.$ref {ref!r} is not supported (only local references like '#/$defs/Name')")
    node = root
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise SchemaError(f"{where}.$ref {ref!r} does not resolve")
        node = node[part]
    return node


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _has_type(value: Any, kind: str) -> bool:
    actual = _type_of(value)
    if kind == "number":
        return actual in ("integer", "number")
    if kind == "integer":
        return actual == "integer" or (actual == "number" and math.isfinite(value) and float(value).is_integer())
    return actual == kind


def _equal(a: Any, b: Any) -> bool:
    # JSON equality: 1 == 1.0, but True is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    numeric = ("integer", "number")
    if (_type_of(a) in numeric) != (_type_of(b) in numeric):
        return False
    return bool(a == b)


def _validate(value: Any, schema: Any, root: Any, path: str, errors: list[str], limit: int) -> None:
    if len(errors) >= limit:
        return
    if schema is True:
        return
    if schema is False:
        errors.append(f"{path}: no value is allowed here")
        return
    if "$ref" in schema:
        _validate(value, _resolve(root, schema["$ref"], "schema"), root, path, errors, limit)

    kinds = schema.get("type")
    if kinds is not None:
        allowed = kinds if isinstance(kinds, list) else [kinds]
        if not any(_has_type(value, k) for k in allowed):
            errors.append(f"{path}: expected {' or '.join(map(str, allowed))}, got {_type_of(value)}")
            return  # the other keywords would only repeat the type mismatch
    if "const" in schema and not _equal(value, schema["const"]):
        errors.append(f"{path}: must be {schema['const']!r}")
    if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
        errors.append(f"{path}: must be one of {schema['enum']!r}, got {value!r}")

    _combinators(value, schema, root, path, errors, limit)
    if isinstance(value, str):
        _string(value, schema, path, errors)
    elif _type_of(value) in ("integer", "number"):
        _number(value, schema, path, errors)
    elif isinstance(value, list):
        _array(value, schema, root, path, errors, limit)
    elif isinstance(value, dict):
        _object(value, schema, root, path, errors, limit)


def _matches(value: Any, schema: Any, root: Any) -> bool:
    errors: list[str] = []
    _validate(value, schema, root, "$", errors, 1)
    return not errors


def _combinators(value: Any, schema: dict[str, Any], root: Any, path: str, errors: list[str], limit: int) -> None:
    for sub in schema.get("allOf", []):
        _validate(value, sub, root, path, errors, limit)
    if "anyOf" in schema and not any(_matches(value, sub, root) for sub in schema["anyOf"]):
        errors.append(f"{path}: matches none of the anyOf alternatives")
    if "oneOf" in schema:
        hits = sum(_matches(value, sub, root) for sub in schema["oneOf"])
        if hits != 1:
            errors.append(f"{path}: must match exactly one oneOf alternative, matches {hits}")
    if "not" in schema and _matches(value, schema["not"], root):
        errors.append(f"{path}: must not match the 'not' schema")


def _string(value: str, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{path}: shorter than {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{path}: longer than {schema['maxLength']} characters")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            found = re.search(pattern, value) is not None
        except re.error:
            found = True  # a pattern Python cannot compile is not the model's fault
        if not found:
            errors.append(f"{path}: does not match pattern {pattern!r}")


def _number(value: float, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    checks = [
        ("minimum", lambda bound: value < bound, "less than"),
        ("maximum", lambda bound: value > bound, "greater than"),
        ("exclusiveMinimum", lambda bound: value <= bound, "at most"),
        ("exclusiveMaximum", lambda bound: value >= bound, "at least"),
    ]
    for key, fails, words in checks:
        bound = schema.get(key)
        if isinstance(bound, int | float) and not isinstance(bound, bool) and fails(bound):
            errors.append(f"{path}: {value!r} is {words} {bound!r} ({key})")
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        ratio = value / step
        if not math.isclose(ratio, round(ratio), rel_tol=0, abs_tol=1e-9):
            errors.append(f"{path}: {value!r} is not a multiple of {step!r}")


def _array(value: list[Any], schema: dict[str, Any], root: Any, path: str, errors: list[str], limit: int) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    prefix = schema.get("prefixItems", [])
    for i, (item, sub) in enumerate(zip(value, prefix, strict=False)):
        _validate(item, sub, root, f"{path}[{i}]", errors, limit)
    items = schema.get("items")
    if isinstance(items, bool | dict):
        for i in range(len(prefix), len(value)):
            _validate(value[i], items, root, f"{path}[{i}]", errors, limit)


def _object(value: dict[str, Any], schema: dict[str, Any], root: Any, path: str, errors: list[str], limit: int) -> None:
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{path}: missing required property {name!r}")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        where = f"{path}.{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f"{path}[{name!r}]"
        if name in properties:
            _validate(item, properties[name], root, where, errors, limit)
        elif extra is False:
            errors.append(f"{path}: unexpected property {name!r}")
        elif isinstance(extra, dict):
            _validate(item, extra, root, where, errors, limit)


__all__ = ["SchemaError", "check_schema", "schema_errors"]
