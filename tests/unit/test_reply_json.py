"""Reply bodies on the wire: compact, strict, UTF-8 JSON whatever the values (codec.dumps_json)."""

from __future__ import annotations

import json
import math

import pytest

from codetr_serve.runtime.codec import dumps_json

BODY = {"schema": "codetr-serve/detections/v1", "request_id": "req-1", "image": {"width": 640, "height": 360},
        "detections": [{"label": "person", "label_id": 0, "score": 0.8525,
                        "box": {"x1": 231.01, "y1": 73.33, "x2": 281.62, "y2": 119.57}}] * 3}


def strict_loads(data: bytes):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(data, parse_constant=refuse)


def test_compact_and_equal_to_the_standard_library() -> None:
    data = dumps_json(BODY)
    assert data == json.dumps(BODY, separators=(",", ":")).encode()
    assert strict_loads(data) == BODY


def test_non_ascii_labels_go_out_as_utf8_not_escapes() -> None:
    data = dumps_json({"label": "사람", "note": "café"})
    assert "사람".encode() in data and b"\\u" not in data
    assert strict_loads(data) == {"label": "사람", "note": "café"}


def test_an_integer_beyond_64_bits_is_written_exactly() -> None:
    # A client-chosen id echoed back (KServe v2 "id") may be any JSON number.
    value = {"id": 2**80 + 7, "label": "사람"}
    data = dumps_json(value)
    assert strict_loads(data) == value and "사람".encode() in data


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_become_null_so_the_reply_stays_json(value: float) -> None:
    assert strict_loads(dumps_json({"score": value})) == {"score": None}
