"""What a wire protocol is: a request in -> an Envelope of images; per-image answers -> one reply.

A protocol never touches pixels or the model: it finds the encoded images (and the options for each) in a
request, and wraps the per-image answers (a detections document, or an error) in its own response shape.
A new protocol is one subclass of :class:`WireProtocol`, listed in ``protocol/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from codetr_serve.runtime import codec
from codetr_serve.runtime.codec import ParsedRequest, RequestLimits
from codetr_serve.runtime.detections import ModelInfo
from codetr_serve.runtime.errors import AllImagesFailed, EmptyInput, ServingError, TooManyImages

__all__ = ["Answer", "Body", "Envelope", "ImageItem", "WireProtocol", "decode_element",
           "image_count_within", "json_type", "kserve_error_body", "overall"]


class Answer(NamedTuple):
    """An HTTP status, a JSON-able body and the reason phrase for the status line (an error's code)."""

    status: int
    body: dict[str, Any]
    reason: str = "OK"


#: One image of a request after parsing: its bytes and options, or the error that image alone gets.
ImageItem = ParsedRequest | ServingError


@dataclass(frozen=True)
class Body:
    """A request's body as read once: the payload (a parsed JSON object, or the raw bytes/text TorchServe
    gave) and the binary tail that follows a JSON header in Triton's binary tensor extension (else empty)."""

    payload: Any
    binary: bytes = b""


@dataclass(frozen=True)
class Envelope:
    """One parsed request: the protocol that reads and answers it, one entry per image, and the request
    fields its reply must echo (KServe v2's ``id``)."""

    protocol: WireProtocol
    items: tuple[ImageItem, ...]
    echo: Mapping[str, Any] = field(default_factory=dict)

    def format(self, answers: Sequence[Any], model: ModelInfo) -> Answer:
        """The reply for this request; ``answers`` (objects with ``status`` and ``body``) align with items."""
        return self.protocol.format(self, answers, model)

    def refuse(self, error: ServingError) -> Answer:
        """The reply when the request fails as a whole, in this protocol's error shape."""
        return self.protocol.refuse(error)


class WireProtocol(ABC):
    """One wire format. Malformed envelopes raise a ServingError from `parse` (the request fails as a whole);
    a problem with one image becomes that item's ServingError, so its request-mates still run."""

    name: ClassVar[str]
    #: The TorchServe route meant for this format. Any of them reaches the handler with the same request
    #: dict, so the body's shape, not the route, picks the protocol.
    route: ClassVar[str]
    #: A minimal body of this format (``claims`` accepts it; docs/reference.md shows it).
    example: ClassVar[str]
    #: Where a request may set the per-request options, lowest precedence first: later sources win. Keys:
    #: "header", "form_field", "json_field", "instance_field", "request_parameters", "input_parameters"
    #: (tests/unit/test_reference.py sends an option through each and checks the order).
    option_sources: ClassVar[tuple[str, ...]]
    #: Whether this format reads Triton's binary tensor tail (see binary_tensors.py); others refuse one.
    accepts_binary: ClassVar[bool] = False

    @abstractmethod
    def claims(self, payload: Any) -> bool:
        """Whether a payload (parsed JSON object, or raw bytes/text) is in this format."""

    @abstractmethod
    def parse(self, request: Mapping[str, Any], body: Body, headers: Mapping[str, Any],
              limits: RequestLimits) -> Envelope:
        """The request's images and options, in order."""

    @abstractmethod
    def format(self, envelope: Envelope, answers: Sequence[Any], model: ModelInfo) -> Answer:
        """One reply wrapping the per-image answers (each has ``status`` and ``body``)."""

    def error_body(self, error: Mapping[str, Any]) -> dict[str, Any]:
        """The top-level body of a failed request; ours is ``{"error": {"code", "message", "status"}}``."""
        return {"error": dict(error)}

    def refuse(self, error: ServingError) -> Answer:
        """A whole request's error, in this protocol's shape."""
        return Answer(error.status, self.error_body(error.to_dict()["error"]), error.code)


def kserve_error_body(error: Mapping[str, Any]) -> dict[str, Any]:
    """The Open Inference Protocol's error shape, ``{"error": "<message>"}``, which clients such as
    tritonclient print as text; our stable ``code`` rides along for clients that branch on it."""
    return {"error": str(error["message"]), "code": error["code"]}


def json_type(value: Any) -> str:
    """A value's JSON type name, for messages to clients who wrote JSON, not Python."""
    for types, name in ((bool, "a boolean"), (int | float, "a number"), (str, "a string"),
                        (Mapping, "an object"), (list, "an array")):
        if isinstance(value, types):
            return name
    return "null" if value is None else type(value).__name__


def image_count_within(count: int, limits: RequestLimits) -> int:
    """``count``, or TooManyImages when one request carries more images than the limit allows."""
    if count > limits.max_images:
        raise TooManyImages(count, limits.max_images)
    return count


def decode_element(text: str, limits: RequestLimits, where: str) -> bytes:
    """One base64 element (a KServe instance or tensor element) -> image bytes; errors name the element."""
    try:
        return codec.decode_base64_text(text, limits)
    except EmptyInput as error:  # the shared message names the /predictions "image" field
        raise EmptyInput(f"{where} is empty; put the base64-encoded image file in it.") from error


def overall(answers: Sequence[Any]) -> tuple[int, dict[str, Any] | None]:
    """The status of a multi-image reply, and its top-level error body when no image succeeded.

    200 as soon as one image succeeded: the failed ones carry their own error in place. When every image
    failed the request did not work, so the status says so: the shared status when all failed alike, 400 for
    different client errors (``all_images_failed``), the server's status when a server error is among them.
    """
    errors = [answer.body["error"] for answer in answers if answer.status != 200]
    if len(errors) < len(answers) or not errors:
        return 200, None
    first, count = errors[0], len(errors)
    if count == 1:
        return first["status"], first
    codes = sorted({error["code"] for error in errors})
    if len(codes) == 1:
        message = f"All {count} images failed; the first: {first['message']}"
        return first["status"], {**first, "message": message}
    server = next((error for error in errors if error["status"] >= 500), None)
    if server is not None:
        return server["status"], {**server, "message": f"All {count} images failed; a server error among "
                                                        f"them: {server['message']}"}
    summary = AllImagesFailed(f"All {count} images failed, for different reasons ({', '.join(codes)}); "
                              "each item's error says what to fix.")
    return summary.status, summary.to_dict()["error"]
