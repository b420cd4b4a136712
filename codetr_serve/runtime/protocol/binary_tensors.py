"""Triton's binary tensor data extension to KServe v2, which tritonclient uses by default.

With it the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensor data;
an input whose ``parameters.binary_data_size`` is set takes its data from that tail instead of ``data``.
A BYTES tensor's elements each come as a 4-byte little-endian length and then that many bytes: for this
model, an element is the image file itself (no base64).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from codetr_serve.runtime import codec
from codetr_serve.runtime.codec import header
from codetr_serve.runtime.errors import InvalidEnvelope
from codetr_serve.runtime.protocol.base import Body
from codetr_serve.runtime.wire_numbers import envelope_error, wire_int

HEADER_LENGTH = "Inference-Header-Content-Length"
_FIX = ("send a JSON body without the header, or let the client build it "
        "(tritonclient: InferInput.set_data_from_numpy)")


def read_body(request: Mapping[str, Any], headers: Mapping[str, Any]) -> Body:
    """The request's body: a JSON header and binary tail when the extension's header is present."""
    declared = header(headers, HEADER_LENGTH)
    if declared is None:
        return Body(codec.read_payload(request))
    raw = next((request[name] for name in codec.IMAGE_FIELDS if request.get(name) is not None), None)
    if isinstance(raw, Mapping):  # TorchServe parsed it all as JSON: there was no binary tail
        return Body(codec.read_payload(request))
    if not isinstance(raw, bytes | bytearray):
        raise InvalidEnvelope(f"{HEADER_LENGTH} is set but the request has no body to split; {_FIX}.")
    length = wire_int(declared, HEADER_LENGTH, 0, len(raw), refuse=envelope_error,
                      expected=f"the JSON header's length in bytes, from 0 to {len(raw)}; or {_FIX}")
    payload = codec.loads_json(bytes(raw[:length]))
    if not isinstance(payload, Mapping):
        raise InvalidEnvelope(f"The JSON header before the binary data is not an object; {_FIX}.")
    return Body(payload, bytes(raw[length:]))


def split_bytes_elements(blob: bytes) -> list[bytes]:
    """A binary BYTES tensor -> its elements; InvalidEnvelope if a length runs past the end."""
    elements, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise InvalidEnvelope(f"The binary BYTES tensor is truncated at byte {offset}; {_FIX}.")
        (size,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + size > len(blob):
            raise InvalidEnvelope(f"A binary BYTES element declares {size} bytes but only "
                                  f"{len(blob) - offset} follow; {_FIX}.")
        elements.append(blob[offset:offset + size])
        offset += size
    return elements
