"""The one bounded parser for wire numbers: ASCII digits, a length cap, a range, a 400 naming the field."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from codetr_serve.runtime.codec import loads_json
from codetr_serve.runtime.errors import InvalidEnvelope, InvalidJSON, InvalidOption, client_text
from codetr_serve.runtime.wire_numbers import (
    JSON_MAX_INT_DIGITS,
    envelope_error,
    option_error,
    wire_float,
    wire_int,
)


def as_int(value: Any, minimum: int = 0, maximum: int = 1000, **kwargs: Any) -> int:
    return wire_int(value, "count", minimum, maximum, refuse=envelope_error, **kwargs)


@pytest.mark.parametrize(("value", "expected"), [
    (7, 7), ("7", 7), (b" 12\r\n", 12), (bytearray(b"+3"), 3), ("0", 0), ("1000", 1000), ("0007", 7),
])
def test_integers_accepted(value: Any, expected: int) -> None:
    assert as_int(value) == expected


@pytest.mark.parametrize("value", [
    "²", "٣", "１２", "1_0", "1.0", "0x10", "", " ", "1 2", "-1", "1001", True, 2.0, None, [1], b"\xff",
    pytest.param("9" * 5000, id="5000-digit-text"), pytest.param(10**4300, id="4301-digit-int"), "1" * 33,
])
def test_integers_refused_with_a_400_naming_the_field(value: Any) -> None:
    with pytest.raises(InvalidEnvelope) as caught:
        as_int(value)
    assert caught.value.status == 400
    assert caught.value.message.startswith("count is ")
    assert "an integer between 0 and 1000" in caught.value.message
    assert len(caught.value.message) < 200


def test_json_integers_can_be_required() -> None:
    assert as_int(5, text=False) == 5
    with pytest.raises(InvalidEnvelope, match="count is '5'"):
        as_int("5", text=False)


@pytest.mark.parametrize(("value", "expected"), [
    (0, 0.0), (1, 1.0), (0.25, 0.25), ("0.5", 0.5), (b".5", 0.5), ("1e-1", 0.1), ("5E-1", 0.5), (" 1. ", 1.0),
])
def test_decimals_accepted(value: Any, expected: float) -> None:
    assert wire_float(value, "score_threshold", 0.0, 1.0, refuse=option_error) == expected


@pytest.mark.parametrize("value", [
    "nan", "inf", "-inf", "1_0", "٠.٥", "0.5x", "e1", ".", "1e99999", float("nan"), float("inf"), 2, -0.5,
    pytest.param(int("9" * 400), id="400-digit-int"), "0." + "1" * 40, False,
])
def test_decimals_refused_as_the_option_error(value: Any) -> None:
    with pytest.raises(InvalidOption) as caught:
        wire_float(value, "score_threshold", 0.0, 1.0, refuse=option_error)
    assert caught.value.option == "score_threshold"
    assert "between 0 and 1" in caught.value.message and len(caught.value.message) < 200


def test_long_values_are_described_not_echoed() -> None:
    with pytest.raises(InvalidOption) as caught:
        wire_float(int("9" * 4000), "score_threshold", 0.0, 1.0, refuse=option_error)
    assert "(an integer of about 400" in caught.value.message  # 4,000 digits, told roughly
    assert client_text("x" * 10_000) == "x" * 200 + "..."
    assert client_text([0] * 10_000) == "an array of 10000 items"
    assert client_text(b"\xff" * 10) == "\ufffd" * 10


def test_json_integers_are_bounded_whatever_pythons_own_limit_says() -> None:
    assert loads_json('{"n": %s}' % ("9" * JSON_MAX_INT_DIGITS)) == {"n": int("9" * JSON_MAX_INT_DIGITS)}
    too_long = '{"n": -%s}' % ("9" * (JSON_MAX_INT_DIGITS + 1))
    previous = sys.get_int_max_str_digits()
    for limit in (0, previous):  # 0: no limit in Python, so only ours stands between a client and int()
        sys.set_int_max_str_digits(limit)
        try:
            with pytest.raises(InvalidJSON, match="4301-digit integer") as caught:
                loads_json(too_long)
        finally:
            sys.set_int_max_str_digits(previous)
        assert caught.value.status == 400 and len(json.dumps(caught.value.to_dict())) < 300
