"""Replay the fuzz seed corpus and every saved crasher through the fuzz target (CI's share of `make fuzz`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from codetr_serve.runtime.errors import InferenceFailed, UndecodableImage
from tests.fuzz import target

CORPUS = sorted((target.HERE / "corpus").iterdir())
CRASHERS = sorted(p for p in (target.HERE / "crashers").iterdir() if p.name != "README.md")


def outcomes(path: Path) -> dict[str, tuple[str, ...]]:
    return {o.delivery: o.results for o in target.check_body(path.read_bytes())}


def test_the_corpus_is_small_and_covers_every_layout():
    assert sum(p.stat().st_size for p in CORPUS) < 2 * 1024 * 1024
    names = {p.name for p in CORPUS}
    for expected in ("jpeg_progressive.jpg", "jpeg_cmyk.jpg", "png_interlaced.png", "png_palette.png",
                     "webp_lossless.webp", "bmp_rgb.bmp", "tiff_multipage.tif", "tiff_planar_float64.tif",
                     "multipart_image.txt", "json_image.json", "kserve_v2.json"):
        assert expected in names


@pytest.mark.parametrize("path", CORPUS + CRASHERS, ids=lambda p: f"{p.parent.name}/{p.name}")
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
])
def test_known_seeds_end_where_they_should(name: str, delivery: str, result: tuple[str, ...]):
    assert outcomes(target.HERE / "corpus" / name)[delivery] == result


def test_the_checker_itself_catches_violations():
    with pytest.raises(target.FuzzFinding, match="500"):
        target._check_error("raw", InferenceFailed(cause="KeyError('x')"))
    leaky = UndecodableImage("cannot identify image file <_io.BytesIO object at 0x7f00>")
    with pytest.raises(target.FuzzFinding, match="leaks"):
        target._check_error("raw", leaky)


def test_multipart_bodies_become_form_fields():
    body = (b'--b\r\nContent-Disposition: form-data; name="data"; filename="x"\r\n\r\nIMG\r\n'
            b'--b\r\nContent-Disposition: form-data; name="max_detections"\r\n\r\n5\r\n--b--\r\n')
    assert target.multipart_fields(body) == {"data": bytearray(b"IMG"), "max_detections": bytearray(b"5")}
