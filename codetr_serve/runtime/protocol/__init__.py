"""Wire protocols: the shapes a request may arrive in, one class each, picked by the body's shape.

TorchServe 0.12 hands the handler the same request dict on ``/predictions/<model>``,
``/v1/models/<model>:predict`` and ``/v2/models/<model>/infer``, with the HTTP headers but not the URL
(measured with an echo handler; docs/schema.md), so the body decides: an object with ``inputs`` is KServe
v2, one with ``instances`` is KServe v1, anything else is the /predictions format. A body holding an
``image`` field stays /predictions whatever else it holds, as it always was.

To add a protocol: subclass :class:`WireProtocol` (parse + format) in a module here and list an instance in
``PROTOCOLS`` before ``Predictions``, which claims everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from codetr_serve.runtime.codec import RequestLimits
from codetr_serve.runtime.errors import InvalidEnvelope
from codetr_serve.runtime.protocol.base import Answer, Body, Envelope, ImageItem, WireProtocol
from codetr_serve.runtime.protocol.binary_tensors import HEADER_LENGTH, read_body
from codetr_serve.runtime.protocol.kserve_v1 import KServeV1
from codetr_serve.runtime.protocol.kserve_v2 import KServeV2
from codetr_serve.runtime.protocol.predictions import Predictions

__all__ = ["PROTOCOLS", "Answer", "Body", "Envelope", "ImageItem", "KServeV1", "KServeV2", "Predictions",
           "WireProtocol", "DEFAULT", "parse_envelope", "protocol_for", "read_request"]

#: Checked in order; the first that claims a body reads it.
PROTOCOLS: tuple[WireProtocol, ...] = (KServeV2(), KServeV1(), Predictions())
#: Answers requests whose body could not even be read (no protocol can claim what is not there).
DEFAULT: WireProtocol = PROTOCOLS[-1]


def protocol_for(payload: Any) -> WireProtocol:
    return next(protocol for protocol in PROTOCOLS if protocol.claims(payload))


def read_request(request: Mapping[str, Any], headers: Mapping[str, Any]) -> tuple[WireProtocol, Body]:
    """The request's body, read once, and the protocol it is in. Raises a ServingError when there is no
    usable body (empty, bad JSON, a binary tail on a body that cannot have one)."""
    body = read_body(request, headers)
    protocol = protocol_for(body.payload)
    if body.binary and not protocol.accepts_binary:
        raise InvalidEnvelope(f"{HEADER_LENGTH} splits off binary tensor data, which only KServe v2 bodies "
                              '(with "inputs") carry; send the request without that header.')
    return protocol, body


def parse_envelope(request: Mapping[str, Any], limits: RequestLimits,
                   headers: Mapping[str, Any] | None = None) -> Envelope:
    """One TorchServe request dict -> its Envelope. Raises a ServingError when the request as a whole is
    unusable (no body, bad JSON, malformed envelope); a bad image is a ServingError among the items."""
    headers = headers or {}
    protocol, body = read_request(request, headers)
    return protocol.parse(request, body, headers, limits)
