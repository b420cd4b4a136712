"""Walks over image containers that our decoders trust too much: the JPEG segment chain and PNG's chunks.

Both run before any decoder sees the bytes and read only the container's framing (markers, lengths), never
pixels. They answer two questions the decoders answer badly on hostile input:

* does a JPEG's first image (the one OpenCV decodes, also in a multi-picture MPO file) reach its
  end-of-image marker through complete segments and scans? libjpeg pads a cut-off scan with grey or leaves
  rows unwritten instead of failing;
* does a PNG hold a reasonable number of chunks before its image data? Pillow's header parser spends ~0.4 s
  per MB of empty ancillary chunks with the GIL held, stalling every decode thread.

Each walk is linear in the input and capped in the number of segments it visits.
"""

from __future__ import annotations

import re

from codetr_serve.runtime.errors import UndecodableImage

__all__ = ["MAX_JPEG_SEGMENTS", "MAX_PNG_CHUNKS_BEFORE_IMAGE", "require_complete_jpeg",
           "require_few_png_chunks"]

#: Markers and segments before the first image's end; a progressive photo has a few dozen.
MAX_JPEG_SEGMENTS = 4096
#: Chunks before the first IDAT; real files carry a handful of metadata chunks.
MAX_PNG_CHUNKS_BEFORE_IMAGE = 1024

_SOI, _EOI, _SOS, _TEM = 0xD8, 0xD9, 0xDA, 0x01
_RESTART = range(0xD0, 0xD8)
#: Inside entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker; anything else
#: (including another 0xFF fill byte) starts the next marker.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7])")
_FILL_BYTES = re.compile(rb"\xff+")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SEND_COMPLETE = "send the complete file"


def require_complete_jpeg(data: bytes) -> None:
    """Refuse a JPEG whose first image does not run, segment by segment, to its end-of-image marker.

    The walk follows each segment's declared length and skips scan data to the next real marker, so an
    end-of-image marker inside an EXIF thumbnail, a comment or a table never counts as the image's end, and
    no parser's file position is trusted (Pillow rewinds MPO files after reading their header).
    """
    if data[:2] != b"\xff\xd8":
        raise _truncated("does not start with a JPEG start-of-image marker")
    pos = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        pos = _skip_fill(data, pos)
        if pos + 1 >= len(data):
            raise _truncated("ends before its end-of-image marker")
        marker = data[pos + 1]
        if marker == _EOI:
            return
        if marker in _RESTART or marker in (_SOI, _TEM):
            pos += 2  # markers without a length field
            continue
        if pos + 4 > len(data):
            raise _truncated("ends inside a segment header")
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if end > len(data) or end < pos + 4:
            raise _truncated("ends inside a segment (or a segment length is impossible)")
        pos = _end_of_scan(data, end) if marker == _SOS else end
    raise UndecodableImage(f"The JPEG has more than {MAX_JPEG_SEGMENTS} segments before its end; re-encode "
                           "it (8-bit baseline or progressive JPEG) and send it again.")


def _skip_fill(data: bytes, pos: int) -> int:
    """Position of the 0xFF that introduces the next marker, or len(data) if none follows.

    Stray bytes before a marker and fill bytes (0xFF 0xFF ...) are skipped, as libjpeg skips them: the walk
    must see the segments the decoder will see.
    """
    pos = data.find(b"\xff", pos)
    if pos == -1:
        return len(data)
    return _FILL_BYTES.match(data, pos).end() - 1


def _end_of_scan(data: bytes, scan_start: int) -> int:
    found = _NEXT_MARKER.search(data, scan_start)
    if found is None:
        raise _truncated("ends inside its image data")
    return found.start()


def _truncated(why: str) -> UndecodableImage:
    return UndecodableImage(f"The JPEG is truncated or corrupt: it {why}; {_SEND_COMPLETE}.")


def require_few_png_chunks(data: bytes) -> None:
    """Refuse a PNG with more than MAX_PNG_CHUNKS_BEFORE_IMAGE chunks before its first IDAT.

    Only counts (12 bytes of framing per chunk, no CRC check): a cut-off or malformed chain is left to the
    decoders, which refuse it themselves.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return
    pos = len(_PNG_SIGNATURE)
    for _ in range(MAX_PNG_CHUNKS_BEFORE_IMAGE):
        if pos + 8 > len(data) or data[pos + 4:pos + 8] == b"IDAT":
            return
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    raise UndecodableImage(
        f"The PNG carries more than {MAX_PNG_CHUNKS_BEFORE_IMAGE} chunks before its image data; strip its "
        "metadata (e.g. re-save it with an image editor or `pngcrush -rem alla`) and send it again.")
