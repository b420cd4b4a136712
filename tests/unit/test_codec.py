"""The /predictions wire format and the shared codec: every accepted form, option parsing, every rejection."""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections import OrderedDict
from typing import Any

import pytest

from codetr_serve.runtime import codec
from codetr_serve.runtime.codec import ParsedRequest, RequestLimits, RequestOptions, decode_base64_text
from codetr_serve.runtime.errors import (
    EmptyInput,
    InvalidBase64,
    InvalidJSON,
    InvalidOption,
    MissingImage,
    PayloadTooLarge,
)
from codetr_serve.runtime.protocol.predictions import parse_request

# The codec never decodes pixels, so any bytes stand in for an image; these start like a PNG.
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
B64 = base64.b64encode(IMAGE).decode("ascii")
LIMITS = RequestLimits()


def parse(request: dict[str, Any], limits: RequestLimits = LIMITS) -> ParsedRequest:
    return parse_request(request, limits)


# --- accepted forms ---


@pytest.mark.parametrize("field", ["body", "data", "image", "file"])
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_raw_bytes_in_any_image_field(field: str, kind: type) -> None:
    parsed = parse({field: kind(IMAGE)})
    assert parsed.image_bytes == IMAGE
    assert type(parsed.image_bytes) is bytes
    assert parsed.options == RequestOptions(None, None)


def test_multipart_field_wins_over_body_and_other_fields_are_ignored() -> None:
    request = {"body": bytearray(b"other"), "data": bytearray(IMAGE), "caption": bytearray(b"hello")}
    assert parse(request).image_bytes == IMAGE
    assert parse({"image": bytearray(IMAGE), "file": bytearray(b"x")}).image_bytes == IMAGE


def test_none_valued_field_is_skipped() -> None:
    assert parse({"data": None, "body": bytearray(IMAGE)}).image_bytes == IMAGE


def test_json_already_parsed_by_torchserve() -> None:
    assert parse({"body": {"image": B64}}).image_bytes == IMAGE


@pytest.mark.parametrize("kind", [bytes, bytearray, str])
def test_json_as_bytes_or_text(kind: type) -> None:
    text = "  \n" + json.dumps({"image": B64, "note": "ignored"})
    value = text if kind is str else kind(text.encode())
    assert parse({"body": value}).image_bytes == IMAGE


@pytest.mark.parametrize("prefix", ["data:image/png;base64,", "DATA:image/jpeg;BASE64,", "data:;base64,"])
def test_data_url(prefix: str) -> None:
    assert parse({"body": {"image": prefix + B64}}).image_bytes == IMAGE


def test_base64_with_line_breaks_urlsafe_alphabet_and_missing_padding() -> None:
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))
    assert parse({"body": {"image": wrapped}}).image_bytes == IMAGE
    urlsafe = base64.urlsafe_b64encode(IMAGE).decode().rstrip("=")
    assert parse({"body": {"image": urlsafe}}).image_bytes == IMAGE


def test_text_body_holding_base64_or_data_url() -> None:
    assert parse({"body": B64}).image_bytes == IMAGE
    assert parse({"body": "data:image/png;base64," + B64 + "\n"}).image_bytes == IMAGE


# --- options ---


def test_options_from_headers_case_insensitive() -> None:
    headers = {"X-Score-Threshold": "0.4", "x-max-detections": "9", "User-Agent": "curl"}
    parsed = parse_request({"body": bytearray(IMAGE)}, LIMITS, headers)
    assert parsed.options == RequestOptions(score_threshold=0.4, max_detections=9)


def test_fields_win_over_headers_and_bad_header_is_invalid_option() -> None:
    request = {"data": bytearray(IMAGE), "max_detections": bytearray(b"2")}
    parsed = parse_request(request, LIMITS, {"X-Max-Detections": "50", "X-Score-Threshold": "0.2"})
    assert parsed.options == RequestOptions(score_threshold=0.2, max_detections=2)
    with pytest.raises(InvalidOption) as raised:
        parse_request({"body": bytearray(IMAGE)}, LIMITS, {"X-Score-Threshold": "high"})
    assert raised.value.option == "score_threshold"


def test_options_from_form_fields_as_bytes() -> None:
    request = {
        "body": bytearray(IMAGE),
        "score_threshold": bytearray(b"0.25"),
        "max_detections": bytearray(b"7"),
    }
    assert parse(request).options == RequestOptions(score_threshold=0.25, max_detections=7)


def test_options_from_json_fields() -> None:
    options = parse({"body": {"image": B64, "score_threshold": 0.5, "max_detections": 12}}).options
    assert options == RequestOptions(score_threshold=0.5, max_detections=12)
    options = parse({"body": {"image": B64, "score_threshold": "0.1", "max_detections": "3"}}).options
    assert options == RequestOptions(score_threshold=0.1, max_detections=3)


def test_json_field_wins_over_query_parameter_and_query_fills_the_rest() -> None:
    request = {
        "body": {"image": B64, "score_threshold": 0.9},
        "score_threshold": bytearray(b"0.1"),
        "max_detections": bytearray(b"5"),
    }
    assert parse(request).options == RequestOptions(score_threshold=0.9, max_detections=5)


def test_unknown_options_are_ignored() -> None:
    request = {"body": bytearray(IMAGE), "iou": bytearray(b"banana"), "version": bytearray(b"2")}
    assert parse(request).options == RequestOptions(None, None)


@pytest.mark.parametrize("value", [b"0", b"1", b" 0.5 ", b"1e-1", 0, 1, 0.3, "0.75"])
def test_score_threshold_accepted_bounds(value: Any) -> None:
    parsed = parse({"body": {"image": B64, "score_threshold": value}})
    assert parsed.options.score_threshold == float(value.decode() if isinstance(value, bytes) else value)


@pytest.mark.parametrize(
    "value", [b"abc", b"", b"1.5", b"-0.1", b"nan", b"inf", b"\xff", True, None, [0.5], 2]
)
def test_score_threshold_rejected(value: Any) -> None:
    request: dict[str, Any] = {"body": {"image": B64, "score_threshold": value}}
    if value is None:  # JSON null means "not given"
        assert parse(request).options.score_threshold is None
        return
    with pytest.raises(InvalidOption) as caught:
        parse(request)
    assert caught.value.option == "score_threshold"
    assert "between 0 and 1" in caught.value.message and "score_threshold" in caught.value.message


@pytest.mark.parametrize("value", [b"1", b"300", b"+5", 42, "17"])
def test_max_detections_accepted(value: Any) -> None:
    expected = int(value.decode() if isinstance(value, bytes) else value)
    assert parse({"body": bytearray(IMAGE), "max_detections": value}).options.max_detections == expected


@pytest.mark.parametrize("value", [b"0", b"-3", b"301", b"1.5", b"ten", b"", b"\xd9\xa3", True, 2.0, 5.5])
def test_max_detections_rejected(value: Any) -> None:
    with pytest.raises(InvalidOption) as caught:
        parse({"body": bytearray(IMAGE), "max_detections": value})
    assert caught.value.option == "max_detections"
    assert "between 1 and 300" in caught.value.message


def test_max_detections_range_follows_limits() -> None:
    limits = RequestLimits(max_detections_limit=50)
    assert parse({"body": bytearray(IMAGE), "max_detections": b"50"}, limits).options.max_detections == 50
    with pytest.raises(InvalidOption, match="between 1 and 50"):
        parse({"body": bytearray(IMAGE), "max_detections": b"51"}, limits)


def test_option_error_echoes_value_readably_and_briefly() -> None:
    with pytest.raises(InvalidOption) as caught:
        parse({"body": bytearray(IMAGE), "score_threshold": bytearray(b"x" * 500)})
    assert caught.value.value == "x" * 40 + "..."
    assert "bytearray" not in caught.value.message


# --- rejections ---


def test_missing_image_lists_fields_received() -> None:
    with pytest.raises(MissingImage) as caught:
        parse({"score_threshold": bytearray(b"0.5"), "photo": bytearray(IMAGE)})
    assert "photo, score_threshold" in caught.value.message
    assert caught.value.status == 400


def test_json_without_image_field() -> None:
    with pytest.raises(MissingImage, match='no "image" field'):
        parse({"body": {"img": B64}})


@pytest.mark.parametrize("value", [123, None, ["a"], {"b64": B64}])
def test_json_image_field_not_a_string(value: Any) -> None:
    with pytest.raises(InvalidJSON, match="base64 string"):
        parse({"body": {"image": value}})


@pytest.mark.parametrize(
    "body", [bytearray(b'{"image": '), b"{not json}", '{"image": "abc",}', b'{"a": "\xff"}']
)
def test_malformed_json(body: Any) -> None:
    with pytest.raises(InvalidJSON, match="not valid JSON"):
        parse({"body": body})


def _nested(levels: int) -> object:
    """Objects and arrays alternating, `levels` deep in all: {"a": [{"a": [...]}]}."""
    value: object = "leaf"
    for level in range(levels):
        value = [value, 1] if level % 2 else {"a": value, "b": None}
    return value


@pytest.mark.parametrize("root", [dict, OrderedDict])
def test_depth_limit_is_exact_whatever_the_mapping_type(root: type) -> None:
    deepest = {"x": _nested(codec.MAX_JSON_DEPTH - 1), "wide": list(range(1000))}
    codec.check_json_depth(root(deepest))
    with pytest.raises(InvalidJSON, match=f"more than {codec.MAX_JSON_DEPTH} levels deep"):
        codec.check_json_depth(root({"x": _nested(codec.MAX_JSON_DEPTH), "y": 1}))
    codec.check_json_depth([_nested(3)] * 10_000)  # wide, shallow: fine


class _Unwalkable(str):
    def __iter__(self):
        raise AssertionError("the depth check walked a string's characters")


def test_depth_check_walks_only_objects_and_arrays() -> None:
    # A JSON document may be a bare string; walking its characters cost 6 s for a 30 MB header.
    codec.check_json_depth(_Unwalkable("x" * 100))
    codec.check_json_depth({"a": [_Unwalkable("y"), {"b": 1}]})


@pytest.mark.parametrize("body", [[{"image": B64}], b'[{"image": "x"}]', b" \n[ not JSON at all", "[1, 2"])
def test_json_array_is_refused(body: Any) -> None:
    with pytest.raises(InvalidJSON, match="array"):
        parse({"body": body})


@pytest.mark.parametrize("text", ["not base64!!", "abc$def", "QUJD=QUJD", "A"])
def test_invalid_base64(text: str) -> None:
    with pytest.raises(InvalidBase64):
        parse({"body": {"image": text}})


@pytest.mark.parametrize(("char", "named"), [("\u00e9", "'é'"), ("\u2028", r"'\u2028'")],
                         ids=["e-acute", "line-separator"])
def test_non_ascii_in_base64_is_named(char: str, named: str) -> None:
    with pytest.raises(InvalidBase64) as caught:
        parse({"body": {"image": B64[:8] + char + B64[8:]}})
    assert f"character {named} is not in the base64 alphabet" in caught.value.message


def test_data_url_with_leading_blanks_and_a_long_header() -> None:
    assert parse({"body": {"image": " \n data:image/png;base64," + B64}}).image_bytes == IMAGE
    with pytest.raises(InvalidBase64, match="base64 data URLs"):
        parse({"body": {"image": "data:image/png;" + "x" * 300 + ";base64," + B64}})


def test_data_url_must_be_base64() -> None:
    with pytest.raises(InvalidBase64, match="base64 data URLs"):
        parse({"body": {"image": "data:image/png,%89PNG"}})


@pytest.mark.parametrize(
    "request_",
    [
        {"body": bytearray()},
        {"data": b""},
        {"body": {"image": " "}},
        {"body": {"image": "data:image/png;base64,"}},
        {"body": "  "},
    ],
)
def test_empty_input(request_: dict[str, Any]) -> None:
    with pytest.raises(EmptyInput) as caught:
        parse(request_)
    assert caught.value.status == 400


def test_raw_payload_over_limit() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        parse({"body": bytearray(1001)}, RequestLimits(max_bytes=1000))
    assert caught.value.status == 413 and "1001 bytes" in caught.value.message
    assert parse({"body": bytearray(1000)}, RequestLimits(max_bytes=1000)).image_bytes == bytes(1000)


def test_base64_over_limit_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_decode(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("b64decode must not run on an oversized payload")

    monkeypatch.setattr(base64, "b64decode", must_not_decode)
    huge = "A" * 4_000_000
    with pytest.raises(PayloadTooLarge):
        parse({"body": {"image": huge}}, RequestLimits(max_bytes=1_000_000))


def traced_peak(call: Any) -> tuple[Any, int]:
    """What ``call()`` returned (or raised) and the most memory Python held for it at any moment."""
    tracemalloc.start()
    try:
        result: Any = call()
    except PayloadTooLarge as error:
        result = error
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("layout", ["mime lines", "a blank after every character"])
def test_base64_with_blanks_is_sized_before_anything_is_copied(layout: str) -> None:
    # Issue 19: the blanks were joined away before the size check, 47 MB to refuse an 8 MB string.
    raw = bytes(range(256)) * 23_438  # 6 MB
    encoded = base64.b64encode(raw).decode()
    text = base64.encodebytes(raw).decode() if layout == "mime lines" else " ".join(encoded)
    refused, peak = traced_peak(lambda: decode_base64_text(text, RequestLimits(max_bytes=1_000_000)))
    assert isinstance(refused, PayloadTooLarge) and refused.status == 413
    assert peak < 100_000  # nothing the size of the string was made to refuse it
    decoded, peak = traced_peak(lambda: decode_base64_text(text, RequestLimits(max_bytes=20_000_000)))
    assert decoded == raw
    assert peak < 2.5 * len(text)  # the blank-free copy and the result; no list of pieces


def test_base64_decoded_size_is_checked_exactly() -> None:
    payload = base64.b64encode(bytes(1001)).decode()
    with pytest.raises(PayloadTooLarge, match="1001 bytes"):
        parse({"body": {"image": payload}}, RequestLimits(max_bytes=1000))
    assert len(parse({"body": {"image": payload}}, RequestLimits(max_bytes=1001)).image_bytes) == 1001


def test_non_bytes_image_field() -> None:
    with pytest.raises(MissingImage, match="int"):
        parse({"data": 42})


def test_limits_validate_themselves() -> None:
    with pytest.raises(ValueError):
        RequestLimits(max_bytes=0)
    with pytest.raises(ValueError):
        RequestLimits(max_detections_limit=0)
    with pytest.raises(ValueError):
        RequestLimits(max_images=0)
