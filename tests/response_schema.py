"""Validate responses against docs/detections.v1.json with `jsonschema` (a validator we did not write)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "detections.v1.json"


@cache
def load_schema() -> dict[str, Any]:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


def validate(document: Any) -> list[str]:
    """Problems as `$.path.to.field: message`; empty when the document is valid."""
    validator = Draft202012Validator(load_schema())
    return sorted(f"{error.json_path}: {error.message}" for error in validator.iter_errors(document))
