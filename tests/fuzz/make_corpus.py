"""Write the fuzz seed corpus: small real encodings of every layout the request path must handle.

    .venv/bin/python -m tests.fuzz.make_corpus          # rewrites tests/fuzz/corpus/ (deterministic)

Each file is one HTTP body as a client sends it (the fuzz target hands it to the core the ways TorchServe
would: raw, parsed JSON, text, multipart fields). Images are 40x30 so the whole corpus stays a few hundred
KB and the fuzzer spends its time on structure, not on pixels. Layouts Pillow cannot write (interlaced PNG,
planar or float64 TIFF) are assembled byte by byte from their specifications.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CORPUS = Path(__file__).resolve().parent / "corpus"
HEIGHT, WIDTH = 30, 40
_rng = np.random.default_rng(7)
RGB = np.clip(np.mgrid[0:HEIGHT, 0:WIDTH][1][..., None] * 6 + _rng.integers(0, 40, (HEIGHT, WIDTH, 3)),
              0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def interlaced_png(rgb: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG (Pillow and OpenCV only write non-interlaced ones)."""
    height, width = rgb.shape[:2]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)]  # Adam7: (x start, y start, x step, y step) of each pass
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            for row in sub:
                raw += b"\x00" + row.tobytes()  # filter type 0 (None) on every scanline
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)  # interlace method 1 = Adam7
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(bytes(raw))) + _png_chunk(b"IEND", b""))


def raw_tiff(planes: np.ndarray, sample_format: int, planar: bool) -> bytes:
    """An uncompressed little-endian TIFF of ``planes`` (C x H x W), written tag by tag.

    ``sample_format`` is TIFF tag 339 (1 unsigned int, 2 signed int, 3 IEEE float); ``planar`` selects
    PlanarConfiguration 2 (one strip per channel) instead of interleaved pixels.
    """
    channels, height, width = planes.shape
    bits = planes.dtype.itemsize * 8
    pixels = planes if planar else np.ascontiguousarray(planes.transpose(1, 2, 0))
    strips = [p.astype(planes.dtype.newbyteorder("<")).tobytes() for p in pixels] if planar \
        else [pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()]
    tags = 11
    extra = 8 + 2 + tags * 12 + 4  # after the header and the one image file directory
    arrays = {"bits": struct.pack(f"<{channels}H", *[bits] * channels),
              "formats": struct.pack(f"<{channels}H", *[sample_format] * channels)}
    offsets_at = extra + len(arrays["bits"]) + len(arrays["formats"])
    counts_at = offsets_at + 4 * len(strips)
    data_at = counts_at + 4 * len(strips)
    starts = [data_at + sum(len(s) for s in strips[:i]) for i in range(len(strips))]

    def entry(tag: int, kind: int, count: int, value: int) -> bytes:
        if kind == 3 and count == 1:
            return struct.pack("<HHIHH", tag, kind, count, value, 0)
        return struct.pack("<HHII", tag, kind, count, value)

    def ref(values: list[int], at: int) -> int:
        return values[0] if len(values) == 1 else at

    photometric = 2 if channels == 3 else 1
    entries = [entry(256, 3, 1, width), entry(257, 3, 1, height),
               entry(258, 3, channels, extra if channels > 2 else bits),
               entry(259, 3, 1, 1), entry(262, 3, 1, photometric),
               entry(273, 4, len(strips), ref(starts, offsets_at)), entry(277, 3, 1, channels),
               entry(278, 3, 1, height), entry(279, 4, len(strips), ref([len(s) for s in strips], counts_at)),
               entry(284, 3, 1, 2 if planar else 1),
               entry(339, 3, channels, extra + len(arrays["bits"]) if channels > 2 else sample_format)]
    assert len(entries) == tags
    head = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", tags) + b"".join(entries) + b"\x00" * 4
    return (head + arrays["bits"] + arrays["formats"] + struct.pack(f"<{len(strips)}I", *starts)
            + struct.pack(f"<{len(strips)}I", *[len(s) for s in strips]) + b"".join(strips))


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG with only an IHDR that claims ``width`` x ``height`` (a decompression-bomb probe)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "fuzzboundary") -> bytes:
    parts = []
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _headers(headers: dict[str, str], body: bytes) -> bytes:
    """An input led by request headers, in the fuzz target's format (target.split_headers). Latin-1:
    TorchServe reads each header byte as one character, so '²' reaches the handler when a client sends B2."""
    lines = "".join(f"{name}: {value}\n" for name, value in headers.items())
    return b"%headers\n" + lines.encode("latin-1") + b"\n" + body


def truncated_mpo_with_end_marker_first(rgb: Image.Image) -> bytes:
    """Issue 19's hole: an MPO whose comment holds FF D9 before the scan, cut mid-scan. A check that trusts
    Pillow's file position (rewound for MPO) finds that marker and lets the rows never decoded through."""
    mpo = encode(rgb, "MPO", save_all=True, append_images=[rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])
    comment = b"\xff\xfe\x00\x06\xff\xd9\x00\x00"  # COM segment, length 6: the bytes FF D9 00 00
    with_comment = mpo[:2] + comment + mpo[2:]  # before APP2: the MP offsets are relative, still valid
    scan = with_comment.index(b"\xff\xda")
    first_end = with_comment.index(b"\xff\xd9", scan)
    return with_comment[: scan + (first_end - scan) // 3]


def images() -> dict[str, Callable[[], bytes]]:
    rgb, gray = Image.fromarray(RGB), Image.fromarray(RGB[..., 0])
    rgb16 = RGB.astype(np.uint16) * 257
    return {
        "jpeg_baseline.jpg": lambda: encode(rgb, "JPEG", quality=80),
        "jpeg_progressive.jpg": lambda: encode(rgb, "JPEG", quality=80, progressive=True),
        "jpeg_cmyk.jpg": lambda: encode(rgb.convert("CMYK"), "JPEG", quality=80),
        "jpeg_exif_rotated.jpg": lambda: encode(rgb, "JPEG", quality=80, exif=_exif(6)),
        "jpeg_gray.jpg": lambda: encode(gray, "JPEG", quality=80),
        "mpo.jpg": lambda: encode(rgb, "MPO", save_all=True, append_images=[gray.convert("RGB")]),
        "png_rgb8.png": lambda: encode(rgb, "PNG"),
        "png_rgb16.png": lambda: cv2.imencode(".png", rgb16[..., ::-1])[1].tobytes(),
        "png_gray16.png": lambda: encode(Image.fromarray(rgb16[..., 0]), "PNG"),
        "png_palette.png": lambda: encode(rgb.quantize(colors=16), "PNG"),
        "png_alpha.png": lambda: encode(rgb.convert("RGBA"), "PNG"),
        "png_interlaced.png": lambda: interlaced_png(RGB),
        "png_exif_rotated.png": lambda: encode(rgb, "PNG", exif=_exif(8)),
        "webp_lossy.webp": lambda: encode(rgb, "WEBP", quality=70),
        "webp_lossless.webp": lambda: encode(rgb, "WEBP", lossless=True),
        "bmp_rgb.bmp": lambda: encode(rgb, "BMP"),
        "bmp_palette.bmp": lambda: encode(rgb.quantize(colors=16), "BMP"),
        "tiff_rgb.tif": lambda: encode(rgb, "TIFF"),
        "tiff_lzw.tif": lambda: encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff_jpeg.tif": lambda: encode(rgb, "TIFF", compression="jpeg"),
        "tiff_multipage.tif": lambda: encode(rgb, "TIFF", save_all=True, append_images=[gray]),
        "tiff_float32_gray.tif": lambda: encode(Image.fromarray(RGB[..., 0].astype(np.float32)), "TIFF"),
        "tiff_planar_uint8.tif": lambda: raw_tiff(RGB.transpose(2, 0, 1), 1, planar=True),
        "tiff_planar_float64.tif": lambda: raw_tiff(RGB.transpose(2, 0, 1).astype(np.float64) / 255, 3, True),
        "tiff_int32_gray.tif": lambda: raw_tiff(RGB[None, ..., 0].astype(np.int32), 2, planar=False),
    }


def bodies(jpeg: bytes, png: bytes) -> dict[str, Callable[[], bytes]]:
    """Non-image bodies: JSON, text, multipart and KServe envelopes around real images, and known probes."""
    b64, b64_png = base64.b64encode(jpeg).decode(), base64.b64encode(png).decode()

    def dumps(value: object) -> Callable[[], bytes]:
        return lambda: json.dumps(value).encode()

    return {
        "json_image.json": dumps({"image": b64}),
        "json_options.json": dumps({"image": b64_png, "score_threshold": 0.3, "max_detections": 5}),
        "json_data_url.json": dumps({"image": "data:image/jpeg;base64," + b64}),
        "json_urlsafe.json": dumps({"image": base64.urlsafe_b64encode(png).decode().rstrip("=")}),
        "json_wrong_type.json": dumps({"image": {"b64": b64}}),
        "json_deep.json": lambda: b'{"image": ' * 2000 + b'"x"' + b"}" * 2000,
        "text_base64.txt": lambda: b64.encode(),
        "text_data_url.txt": lambda: ("data:image/png;base64," + b64_png).encode(),
        "multipart_image.txt": lambda: _multipart([("data", "a.jpg", jpeg), ("max_detections", None, b"7")]),
        "multipart_fields.txt": lambda: _multipart([("image", "a.png", png),
                                                    ("score_threshold", None, b"0.9")]),
        "kserve_v1_data.json": dumps({"instances": [{"data": b64}]}),
        "kserve_v1_b64.json": dumps({"instances": [{"image": {"b64": b64_png}}, {"image": {"b64": b64}}]}),
        "kserve_v2.json": dumps({"inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES",
                                             "data": [b64]}]}),
        "probe_png_bomb.png": lambda: png_header_claiming(50_000, 50_000),
        "probe_truncated.jpg": lambda: jpeg[: len(jpeg) // 2],
        "probe_gif.gif": lambda: encode(Image.fromarray(RGB), "GIF"),
        "probe_mpo_truncated_after_comment.jpg": lambda: truncated_mpo_with_end_marker_first(
            Image.fromarray(RGB)),
    }


def wire_bodies(jpeg: bytes, png: bytes) -> dict[str, Callable[[], bytes]]:
    """The protocol layer's seeds: headers, KServe v2 binary tensors, and issue 19's client mistakes in
    numbers (each once answered 500), written as a client would send them."""
    b64, huge = base64.b64encode(jpeg).decode(), "9" * 5000
    v2_json = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]})
    head = json.dumps({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 8 + len(jpeg) + len(png)}}]}).encode()
    tensor = b"".join(struct.pack("<I", len(image)) + image for image in (jpeg, png))
    length = {"Inference-Header-Content-Length": str(len(head))}
    huge_head = head.replace(str(8 + len(jpeg) + len(png)).encode(), b"9" * 400)

    def text(value: str) -> Callable[[], bytes]:
        return lambda: value.encode("utf-8")

    return {
        "wire_json_int_5000_digits.json": text(f'{{"image": "{b64}", "seed": {huge}}}'),
        "wire_json_threshold_400_digits.json": text(f'{{"image": "{b64}", "score_threshold": {"9" * 400}}}'),
        "wire_header_max_detections_5000_digits.txt": lambda: _headers({"X-Max-Detections": huge},
                                                                       jpeg),
        "wire_header_options.txt": lambda: _headers({"X-Score-Threshold": "0.25", "X-Max-Detections": "3"},
                                                    jpeg),
        "wire_multipart_threshold_arabic_digits.txt": lambda: _multipart([("data", "a.jpg", jpeg), (
            "score_threshold", None, "٠.٥".encode())]),  # float() reads it as 0.5; we read ASCII only
        "wire_v2_header_length_superscript.bin": lambda: _headers(
            {"Inference-Header-Content-Length": "²"}, v2_json.encode()),
        "wire_v2_header_length_5000_digits.bin": lambda: _headers(
            {"Inference-Header-Content-Length": huge}, v2_json.encode()),
        "wire_v2_binary.bin": lambda: _headers(length, head + tensor),
        "wire_v2_binary_size_400_digits.bin": lambda: _headers(
            {"Inference-Header-Content-Length": str(len(huge_head))}, huge_head + tensor),
        # 240 dimensions of 10**18: their product's 4,320 digits broke the old error message itself
        "wire_v2_shape_240_huge_dims.json": text(v2_json.replace(
            '"shape": [1]', f'"shape": [{", ".join([str(10**18)] * 240)}]')),
        "wire_v2_nested_shape.json": text(v2_json.replace('"shape": [1]', '"shape": [1, 2, 1]').replace(
            f'"data": ["{b64}"]', f'"data": [[["{b64}"], ["{b64}"]]]')),
        "wire_v1_one_bad_instance.json": text(json.dumps({"instances": [{"b64": b64}]})[:-2]
                                              + f', {{"b64": "{b64}", "score_threshold": {"9" * 400}}}]}}'),
        "wire_multipart_max_detections_5000_digits.txt": lambda: _multipart([("data", "a.jpg", jpeg),
                                                                           ("max_detections", None,
                                                                            huge.encode())]),
        "wire_text_base64_blank_separated.txt": text(" ".join(b64)),
    }


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    for stale in CORPUS.iterdir():
        stale.unlink()
    written = {name: make() for name, make in images().items()}
    for more in (bodies, wire_bodies):
        written.update({name: make() for name, make in more(written["jpeg_baseline.jpg"],
                                                            written["png_rgb8.png"]).items()})
    for name, data in written.items():
        (CORPUS / name).write_bytes(data)
    total = sum(len(data) for data in written.values())
    print(f"{len(written)} seeds, {total} bytes in {CORPUS}")


if __name__ == "__main__":
    main()
