"""Command-line client: post an image, print the detections, optionally draw them.

    python -m codetr_serve.tools.client photo.jpg --draw photo.boxes.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from codetr_serve.tools.torchserve_api import TorchServeClient


def draw_detections(image_bytes: bytes, response: dict, out_path: Path) -> None:
    """Save the image with one labelled rectangle per detection as a PNG."""
    import io

    from PIL import Image, ImageDraw, ImageOps

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes))).convert("RGB")
    pen = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 400))
    for detection in response["detections"]:
        box = detection["box"]
        corners = (box["x1"], box["y1"], box["x2"], box["y2"])
        pen.rectangle(corners, outline=(255, 64, 0), width=width)
        pen.text((box["x1"] + width, box["y1"] + width),
                 f"{detection['label']} {detection['score']:.2f}", fill=(255, 255, 0))
    image.save(out_path, format="PNG")


def summary(response: dict) -> str:
    lines = [f"{len(response['detections'])} detections ({response['model']['name']} "
             f"{response['model']['version']}, {response['image']['width']}x{response['image']['height']})"]
    for d in response["detections"]:
        b = d["box"]
        corners = ", ".join(f"{b[k]:.0f}" for k in ("x1", "y1", "x2", "y2"))
        lines.append(f"  {d['label']:<20} {d['score']:.3f}  [{corners}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Detect objects in an image with a running codetr-serve.")
    parser.add_argument("image", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="TorchServe inference address")
    parser.add_argument("--model", default="co_detr")
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"),
                        help="TorchServe's key file (token auth); ignored when absent")
    parser.add_argument("--score-threshold", type=float)
    parser.add_argument("--max-detections", type=int)
    parser.add_argument("--draw", type=Path, help="write the image with boxes to this PNG")
    parser.add_argument("--json", action="store_true", help="print the raw JSON response")
    args = parser.parse_args(argv)

    try:
        image = args.image.read_bytes()
    except OSError as error:
        parser.error(f"cannot read {args.image}: {error.strerror or error}")
    params = {k: v for k, v in (("score_threshold", args.score_threshold),
                                ("max_detections", args.max_detections)) if v is not None}
    client = TorchServeClient(inference_url=args.url, key_file=args.key_file)
    response = client.predict(args.model, image, **params)
    try:  # TorchServe does not always label JSON replies as such, so parse rather than trust the header
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text}}
    if response.status_code != 200:
        print(f"HTTP {response.status_code}: {json.dumps(body)}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2) if args.json else summary(body))
    if args.draw:
        draw_detections(image, body, args.draw)
        print(f"boxes drawn to {args.draw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
