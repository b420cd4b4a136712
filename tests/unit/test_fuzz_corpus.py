"""Replay the fuzz seed corpus and every saved crasher through the fuzz target (CI's share of `make fuzz`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from codetr_serve.runtime.errors import InferenceFailed, UndecodableImage
from tests.fuzz import target

CORPUS = sorted((target.HERE / "corpus").iterdir())
CRASHERS = sorted(p for p in (target.HERE / "crashers").iterdir() if p.name != "README.md")
#: Seeds that still find a violation on this branch, each with the fix that closes it. strict: once the
#: fix lands the seed passes, this mark fails, and the line must go.
#: Seeds that still find a defect, by file name -> why (replayed as strict expected failures until fixed).
OPEN_FINDINGS: dict[str, str] = {}


def replayed(path: Path) -> object:
    reason = OPEN_FINDINGS.get(path.name)
    marks = [pytest.mark.xfail(raises=target.FuzzFinding, strict=True, reason=reason)] if reason else []
    return pytest.param(path, marks=marks, id=f"{path.parent.name}/{path.name}")


def outcomes(path: Path) -> dict[str, tuple[str, ...]]:
    return {o.delivery: o.results for o in target.check_body(path.read_bytes())}


def test_the_corpus_is_small_and_covers_every_layout():
    assert sum(p.stat().st_size for p in CORPUS) < 2 * 1024 * 1024
    names = {p.name for p in CORPUS}
    for expected in ("jpeg_progressive.jpg", "jpeg_cmyk.jpg", "png_interlaced.png", "png_palette.png",
                     "webp_lossless.webp", "bmp_rgb.bmp", "tiff_multipage.tif", "tiff_planar_float64.tif",
                     "multipart_image.txt", "json_image.json", "kserve_v2.json", "wire_v2_binary.bin",
                     "wire_header_options.txt", "wire_v1_one_bad_instance.json",
                     "probe_mpo_truncated_after_comment.jpg"):
        assert expected in names


@pytest.mark.parametrize("path", [replayed(path) for path in CORPUS + CRASHERS])
def test_every_input_ends_as_an_image_or_a_4xx_of_ours(path: Path):
    assert target.check_body(path.read_bytes())  # raises FuzzFinding on any violation


@pytest.mark.parametrize(("name", "delivery", "result"), [
    ("jpeg_exif_rotated.jpg", "raw", ("image 40x30",)),  # EXIF orientation 6 applied
    ("png_interlaced.png", "raw", ("image 30x40",)),
    ("tiff_planar_uint8.tif", "raw", ("image 30x40",)),
    ("tiff_planar_float64.tif", "raw", ("unsupported_image_format",)),
    ("json_image.json", "json", ("image 30x40",)),  # as TorchServe parses application/json
    ("json_image.json", "raw", ("image 30x40",)),
    ("json_deep.json", "raw", ("invalid_json",)),  # 2000 levels: TorchServe's json.loads gives up too
    ("multipart_image.txt", "multipart", ("image 30x40",)),
    ("text_data_url.txt", "text", ("image 30x40",)),
    ("probe_png_bomb.png", "raw", ("image_too_large",)),
    ("kserve_v1_b64.json", "json", ("image 30x40", "image 30x40")),  # one request, two images
    ("kserve_v2.json", "json", ("image 30x40",)),
    # issue 19 part 2: each of these was a 500 (inference_failed) with a traceback in the log
    ("wire_json_int_5000_digits.json", "raw", ("invalid_json",)),
    ("wire_json_threshold_400_digits.json", "json", ("invalid_option",)),
    ("wire_header_max_detections_5000_digits.txt", "raw", ("invalid_option",)),
    ("wire_multipart_threshold_arabic_digits.txt", "multipart", ("invalid_option",)),
    ("wire_v2_header_length_superscript.bin", "raw", ("invalid_envelope",)),
    ("wire_v2_header_length_5000_digits.bin", "raw", ("invalid_envelope",)),
    ("wire_v2_shape_240_huge_dims.json", "json", ("invalid_envelope",)),
    ("wire_v2_binary_size_400_digits.bin", "raw", ("invalid_envelope",)),
    ("wire_multipart_max_detections_5000_digits.txt", "multipart", ("invalid_option",)),
    ("wire_v1_one_bad_instance.json", "json", ("image 30x40", "invalid_option")),  # fails alone
    # and the protocol layer's good paths
    ("wire_header_options.txt", "raw", ("image 30x40",)),
    ("wire_v2_binary.bin", "raw", ("image 30x40", "image 30x40")),
    ("wire_v2_nested_shape.json", "json", ("image 30x40", "image 30x40")),
    ("wire_text_base64_blank_separated.txt", "text", ("image 30x40",)),
])
def test_known_seeds_end_where_they_should(name: str, delivery: str, result: tuple[str, ...]):
    assert outcomes(target.HERE / "corpus" / name)[delivery] == result


def test_the_checker_itself_catches_violations():
    with pytest.raises(target.FuzzFinding, match="500"):
        target._check_error("raw", InferenceFailed(cause="KeyError('x')"))
    leaky = UndecodableImage("cannot identify image file <_io.BytesIO object at 0x7f00>")
    with pytest.raises(target.FuzzFinding, match="leaks"):
        target._check_error("raw", leaky)


def test_the_foreign_pixel_check_catches_a_decoder_that_returns_other_memory(monkeypatch):
    from codetr_serve.runtime import decode

    real, calls = decode.decode_image, []

    def leaky(data: bytes, limits) -> object:  # the second decode of the same bytes comes back changed
        image = real(data, limits)
        calls.append(data)
        if calls.count(data) == 2:
            image = image.copy()
            image[0, :] = 255 - image[0, :]
        return image

    monkeypatch.setattr(decode, "decode_image", leaky)
    with pytest.raises(target.FuzzFinding, match="differs from its decode alone in 40 of 1200 pixels"):
        target.check_no_foreign_pixels((target.HERE / "corpus" / "png_rgb8.png").read_bytes())


def test_inputs_may_lead_with_request_headers():
    assert target.split_headers(b"%headers\nX-Max-Detections: 5\nInference-Header-Content-Length:  12 "
                                b"\n\n{body}") == ({"X-Max-Detections": "5",
                                                    "Inference-Header-Content-Length": "12"}, b"{body}")
    assert target.split_headers(b"%headers\nno blank line") == ({}, b"%headers\nno blank line")
    assert target.split_headers(b"\x89PNG") == ({}, b"\x89PNG")


def test_multipart_bodies_become_form_fields():
    body = (b'--b\r\nContent-Disposition: form-data; name="data"; filename="x"\r\n\r\nIMG\r\n'
            b'--b\r\nContent-Disposition: form-data; name="max_detections"\r\n\r\n5\r\n--b--\r\n')
    assert target.multipart_fields(body) == {"data": bytearray(b"IMG"), "max_detections": bytearray(b"5")}
