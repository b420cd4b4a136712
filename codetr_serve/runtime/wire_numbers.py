"""One bounded parser for every number that comes off the wire: headers, form fields and JSON values.

Python's own conversions were not written for hostile input, and each of these became a 500 with a traceback:
``int()`` of more than 4,300 digits raises ValueError, ``float()`` of a 400-digit integer raises
OverflowError, ``str.isdigit()`` accepts '²', and ``float()`` accepts 'nan', '1_000' and non-ASCII digits.
Here a number sent as text is ASCII only and at most ``MAX_NUMBER_CHARS`` long; a JSON number is compared
with its range before any conversion; anything else is a 400 that names the field and says what to send.

Callers choose the error: an option (``score_threshold``) is ``invalid_option``, a field of a KServe
envelope (a shape, a byte count) is ``invalid_envelope``; see :func:`option_error` and :func:`envelope_error`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from codetr_serve.runtime.errors import InvalidEnvelope, InvalidJSON, InvalidOption, ServingError, client_text

__all__ = ["JSON_MAX_INT_DIGITS", "MAX_NUMBER_CHARS", "Refusal", "envelope_error", "json_int",
           "option_error", "wire_float", "wire_int"]

#: Longest number accepted as text. Integers we read are counts, sizes and dimensions (int64 has 19
#: digits); a decimal threshold needs ~20 characters even written out in full.
MAX_NUMBER_CHARS = 32
#: Longest integer accepted inside a JSON body: Python's default int-string limit, which TorchServe's own
#: parser applies to application/json bodies, so a body reads the same whoever parses it. Bigger values
#: still reach us (within this many digits) and each field refuses them by range.
JSON_MAX_INT_DIGITS = 4300
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,32}")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_ASCII_BLANKS = " \t\r\n"
_SHOWN_CHARS = 40

#: Builds the error for one refused number: (field, the value as sent, what to send instead).
Refusal = Callable[[str, Any, str], ServingError]


def option_error(field: str, value: Any, expected: str) -> ServingError:
    return InvalidOption(field, client_text(value, limit=_SHOWN_CHARS), expected,
                         message=f"Invalid value {_shown(value)} for option '{field}': expected {expected}.")


def envelope_error(field: str, value: Any, expected: str) -> ServingError:
    return InvalidEnvelope(f"{field} is {_shown(value)}; send {expected}.")


def _shown(value: Any) -> str:
    """A refused value for a message: text quoted and cut, a literal as JSON would write it, anything
    else (a long integer, an array) described in parentheses."""
    text = client_text(value, limit=_SHOWN_CHARS)
    if isinstance(value, str | bytes | bytearray):
        return repr(text)
    literal = value is None or isinstance(value, bool | float) or (
        isinstance(value, int) and value.bit_length() <= 64)
    return text if literal else f"({text})"


def wire_int(value: Any, field: str, minimum: int, maximum: int, *, refuse: Refusal,
             expected: str | None = None, text: bool = True) -> int:
    """An integer in ``[minimum, maximum]`` from a JSON integer or (with ``text``) decimal text, bytes or
    str; else ``refuse(field, value, expected)`` is raised. Booleans and floats are not integers here."""
    expected = expected or f"an integer between {minimum} and {maximum} (inclusive)"
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif text:
        digits = _number_text(value)
        if digits is not None and _INT_TEXT.fullmatch(digits):
            number = int(digits)  # at most 33 characters: always within Python's conversion limit
    if number is None or not minimum <= number <= maximum:
        raise refuse(field, value, expected)
    return number


def wire_float(value: Any, field: str, minimum: float, maximum: float, *, refuse: Refusal,
               expected: str | None = None) -> float:
    """A finite number in ``[minimum, maximum]`` from a JSON number or decimal text; else ``refuse(...)``."""
    expected = expected or f"a number between {minimum:g} and {maximum:g} (inclusive)"
    number: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        # Compared as an integer first: float() of a 400-digit integer raises OverflowError.
        number = float(value) if minimum <= value <= maximum else None
    elif isinstance(value, float):
        number = value
    else:
        decimal = _number_text(value)
        if decimal is not None and _DECIMAL_TEXT.fullmatch(decimal):
            number = float(decimal)
    if number is None or not math.isfinite(number) or not minimum <= number <= maximum:
        raise refuse(field, value, expected)
    return number


def json_int(text: str) -> int:
    """``json.loads``' ``parse_int``: integers beyond JSON_MAX_INT_DIGITS are a client error of ours,
    whatever ``sys.set_int_max_str_digits`` says (0 there would make a long one cost quadratic time)."""
    digits = len(text) - (text[:1] == "-")
    if digits > JSON_MAX_INT_DIGITS:
        raise InvalidJSON(f"The body holds a {digits}-digit integer; numbers in a request have at most "
                          f"{JSON_MAX_INT_DIGITS} digits (counts and sizes fit in 19): send the value "
                          "that was meant.")
    return int(text)


def _number_text(value: Any) -> str | None:
    """Text of a number as sent (bytes from headers and form fields, str from JSON), blanks trimmed;
    None when it is no text, not UTF-8, or longer than any number we read."""
    if isinstance(value, bytes | bytearray):
        if len(value) > 4 * MAX_NUMBER_CHARS:
            return None
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or len(value) > 4 * MAX_NUMBER_CHARS:
        return None
    text = value.strip(_ASCII_BLANKS)
    return text if 0 < len(text) <= MAX_NUMBER_CHARS else None
