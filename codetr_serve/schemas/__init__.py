"""JSON Schemas of our responses, and a small validator for the subset of JSON Schema they use.

We do not depend on the ``jsonschema`` package: the schemas use only ``type``, ``required``,
``properties``, ``additionalProperties``, ``items``, ``const``, ``enum``, ``minimum`` and ``maximum``, and
the validator refuses any other keyword, so a schema edit can never be silently ignored. Any standard
JSON Schema (2020-12) validator accepts the same files.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["load_schema", "validate"]

_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description"})
_SUPPORTED = frozenset(
    {"type", "const", "enum", "minimum", "maximum", "required", "properties", "additionalProperties", "items"}
)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


@cache
def load_schema(name: str = "detections.v1") -> dict[str, Any]:
    """The parsed schema ``codetr_serve/schemas/<name>.json``."""
    text = resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate(document: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """Problems found in ``document`` (empty list: valid). Defaults to the detections v1 schema."""
    problems: list[str] = []
    _check(document, load_schema() if schema is None else schema, "$", problems)
    return problems


def _is_type(value: Any, type_name: str) -> bool:
    if type_name in ("integer", "number") and isinstance(value, bool):
        return False  # JSON has no bool/number overlap, Python does
    return isinstance(value, _JSON_TYPES[type_name])


def _check(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    keywords = set(schema) - _ANNOTATIONS
    if keywords - _SUPPORTED:
        raise ValueError(f"schema keyword(s) {sorted(keywords - _SUPPORTED)} at {path} are not supported")
    if "type" in schema:
        _check_type(value, schema, path, problems)
    if "const" in schema:
        _check_const(value, schema, path, problems)
    if "enum" in schema:
        _check_enum(value, schema, path, problems)
    if keywords & {"minimum", "maximum"}:
        _check_bounds(value, schema, path, problems)
    if keywords & {"required", "properties", "additionalProperties"}:
        _check_object(value, schema, path, problems)
    if "items" in schema:
        _check_items(value, schema, path, problems)


def _check_type(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    if not _is_type(value, schema["type"]):
        problems.append(f"{path}: expected {schema['type']}, got {type(value).__name__}")


def _check_const(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    if value != schema["const"]:
        problems.append(f"{path}: expected {schema['const']!r}, got {value!r}")


def _check_enum(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    if value not in schema["enum"]:
        problems.append(f"{path}: {value!r} is not one of {schema['enum']!r}")


def _check_bounds(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    if not _is_type(value, "number"):
        return
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{path}: {value} is below the minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(f"{path}: {value} is above the maximum {schema['maximum']}")


def _check_object(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        return
    for key in schema.get("required", ()):
        if key not in value:
            problems.append(f"{path}: missing required field {key!r}")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            _check(item, properties[key], f"{path}.{key}", problems)
        elif extra is False:
            problems.append(f"{path}: unexpected field {key!r}")
        elif isinstance(extra, dict):
            _check(item, extra, f"{path}.{key}", problems)


def _check_items(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{index}]", problems)
