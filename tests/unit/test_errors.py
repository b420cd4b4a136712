"""Domain errors: status mapping, stable codes, fix-oriented messages, JSON shape."""

from __future__ import annotations

import json
import re

import pytest

from codetr_serve.runtime import errors
from codetr_serve.runtime.errors import (
    EmptyInput,
    ImageTooLarge,
    ImageTooSmall,
    InferenceFailed,
    InvalidBase64,
    InvalidJSON,
    InvalidOption,
    MissingImage,
    ModelNotReady,
    PayloadTooLarge,
    ServingError,
    UndecodableImage,
    UnsupportedImageFormat,
    error_catalog,
)

# The contract clients and dashboards rely on: code -> HTTP status. Changing a line here is a breaking change.
EXPECTED_STATUS = {
    EmptyInput: ("empty_input", 400),
    MissingImage: ("missing_image", 400),
    InvalidBase64: ("invalid_base64", 400),
    InvalidJSON: ("invalid_json", 400),
    InvalidOption: ("invalid_option", 400),
    UndecodableImage: ("undecodable_image", 400),
    ImageTooSmall: ("image_too_small", 400),
    PayloadTooLarge: ("payload_too_large", 413),
    ImageTooLarge: ("image_too_large", 413),
    UnsupportedImageFormat: ("unsupported_image_format", 415),
    ModelNotReady: ("model_not_ready", 503),
    InferenceFailed: ("inference_failed", 500),
}


def _instance(cls: type[ServingError]) -> ServingError:
    """One instance of each class, built with its real constructor arguments."""
    samples = {
        InvalidOption: lambda: InvalidOption("score_threshold", "2", "a number between 0 and 1"),
        PayloadTooLarge: lambda: PayloadTooLarge(20_000_000, 16_777_216),
        ImageTooLarge: lambda: ImageTooLarge(50_000, 50_000, "the limit is 40000000 pixels in total"),
        ImageTooSmall: lambda: ImageTooSmall(4, 4, 8),
        UnsupportedImageFormat: lambda: UnsupportedImageFormat("GIF", ("JPEG", "PNG")),
    }
    return samples.get(cls, cls)()


@pytest.mark.parametrize("cls", list(EXPECTED_STATUS), ids=lambda cls: cls.__name__)
def test_status_and_code_match_the_contract(cls: type[ServingError]) -> None:
    code, status = EXPECTED_STATUS[cls]
    error = _instance(cls)
    assert isinstance(error, ServingError)
    assert (error.code, error.status) == (code, status)
    assert error.to_dict() == {"error": {"code": code, "message": error.message, "status": status}}
    assert json.loads(json.dumps(error.to_dict())) == error.to_dict()
    assert str(error) == error.message
    assert len(error.message) > 20


def test_catalog_lists_every_error_once_with_its_status() -> None:
    catalog = error_catalog()
    for code, status in EXPECTED_STATUS.values():
        assert catalog[code] == status
    assert catalog["serving_error"] == 500
    codes = [cls.code for cls in EXPECTED_STATUS]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", code) for code in catalog)


def test_catalog_does_not_depend_on_what_else_is_imported() -> None:
    before = error_catalog()

    class ElsewhereError(ServingError):
        status = 503
        code = "test_defined_elsewhere"

    assert ElsewhereError().status == 503
    assert error_catalog() == before
    assert "weights_error" not in before, "weights failures are start-up errors, not HTTP errors"


def test_every_public_error_is_exported() -> None:
    for cls in EXPECTED_STATUS:
        assert cls.__name__ in errors.__all__


def test_custom_message_and_details() -> None:
    error = InferenceFailed("CUDA out of memory; retry with a smaller image", cause="RuntimeError('oom')")
    assert error.message == "CUDA out of memory; retry with a smaller image"
    assert error.details == {"cause": "RuntimeError('oom')"}
    assert "cause" not in error.to_dict()["error"]  # internals are never sent to clients
    assert "InferenceFailed" in repr(error) and "500" in repr(error)


def test_invalid_option_names_option_value_and_range() -> None:
    error = InvalidOption("max_detections", "0", "an integer between 1 and 300 (inclusive)")
    assert (error.option, error.value, error.allowed) == (
        "max_detections",
        "0",
        "an integer between 1 and 300 (inclusive)",
    )
    assert "max_detections" in error.message and "'0'" in error.message and "1 and 300" in error.message


def test_missing_image_names_accepted_forms_and_fields_seen() -> None:
    error = MissingImage(fields_seen=["score_threshold", "foo"])
    for form in ("'data'", "'image'", "'file'", '"image"', "base64", "raw image bytes"):
        assert form in error.message
    assert error.message.endswith("Fields received: foo, score_threshold.")
    assert "Fields received" not in MissingImage().message


def test_size_errors_carry_numbers() -> None:
    assert "20000000 bytes" in PayloadTooLarge(20_000_000, 1000).message
    assert "1000 bytes" in PayloadTooLarge(20_000_000, 1000).message
    assert "50000x50000 pixels" in ImageTooLarge(50_000, 50_000, "too many").message
    unknown_size = ImageTooLarge(None, None, "Pillow refused the header")
    assert "Pillow refused the header" in unknown_size.message and "None" not in unknown_size.message
    assert "4x4" in ImageTooSmall(4, 4, 8).message and "8 pixels" in ImageTooSmall(4, 4, 8).message


def test_unsupported_format_names_detected_and_supported() -> None:
    message = UnsupportedImageFormat("GIF", ("JPEG", "PNG")).message
    assert "GIF" in message and "JPEG, PNG" in message
    assert "unrecognised" in UnsupportedImageFormat(None, ("JPEG",)).message
