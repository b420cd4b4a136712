"""Response schema v1: filtering, sorting, truncation, clipping, label names, rounding, JSON Schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from codetr_serve.runtime.detections import SCHEMA_ID, ModelInfo, build_response, label_name
from tests.response_schema import load_schema, validate

CLASSES = ("person", "bicycle", "car")
MODEL = ModelInfo(name="co-dino-swinl", version="o365tococo-1")
REPO = Path(__file__).resolve().parents[2]


def respond(boxes: Any, scores: Any, labels: Any, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "class_names": CLASSES,
        "image_size": (480, 640),
        "score_threshold": 0.3,
        "max_detections": 100,
        "model": MODEL,
        "timings_ms": {"decode": 1.23456, "inference": 200.0},
    }
    arguments.update(overrides)
    return build_response(np.asarray(boxes), np.asarray(scores), np.asarray(labels), **arguments)


def scores_of(response: dict[str, Any]) -> list[float]:
    return [detection["score"] for detection in response["detections"]]


BOXES = [[10, 10, 50, 50], [20, 20, 60, 60], [30, 30, 70, 70], [40, 40, 80, 80]]


def test_full_response_shape() -> None:
    response = respond([[10.123, 20.456, 30.789, 40.001]], [0.87654321], [2])
    assert response == {
        "schema": "codetr-serve/detections/v1",
        "model": {"name": "co-dino-swinl", "version": "o365tococo-1"},
        "image": {"width": 640, "height": 480},
        "detections": [
            {
                "label": "car",
                "label_id": 2,
                "score": 0.8765,
                "box": {"x1": 10.12, "y1": 20.46, "x2": 30.79, "y2": 40.0},
            }
        ],
        "timings_ms": {"decode": 1.23, "inference": 200.0},
    }
    assert validate(response) == []


def test_values_are_plain_python_and_json_serialisable() -> None:
    response = respond(np.float32(BOXES), np.float32([0.9, 0.8, 0.7, 0.6]), np.int64([0, 1, 2, 0]))
    detection = response["detections"][0]
    assert type(detection["label_id"]) is int and type(detection["score"]) is float
    assert all(type(value) is float for value in detection["box"].values())
    assert json.loads(json.dumps(response)) == response


def test_threshold_is_inclusive_and_filters() -> None:
    response = respond(BOXES, [0.29, 0.3, 0.31, 0.1], [0, 0, 0, 0], score_threshold=0.3)
    assert scores_of(response) == [0.31, 0.3]


def test_sorted_by_score_descending_with_stable_ties() -> None:
    response = respond(BOXES, [0.5, 0.9, 0.5, 0.7], [0, 1, 2, 0])
    assert scores_of(response) == [0.9, 0.7, 0.5, 0.5]
    assert [d["label_id"] for d in response["detections"]] == [1, 0, 0, 2]  # equal scores keep model order


def test_max_detections_keeps_the_best() -> None:
    response = respond(BOXES, [0.4, 0.9, 0.6, 0.8], [0, 1, 2, 0], max_detections=2)
    assert scores_of(response) == [0.9, 0.8]
    assert respond(BOXES, [0.4, 0.9, 0.6, 0.8], [0, 1, 2, 0], max_detections=0)["detections"] == []


def test_boxes_are_clipped_to_the_image() -> None:
    response = respond([[-5.5, -1, 700, 500.4], [600, 470, 650, 490]], [0.9, 0.8], [0, 1])
    assert response["detections"][0]["box"] == {"x1": 0.0, "y1": 0.0, "x2": 640.0, "y2": 480.0}
    assert response["detections"][1]["box"] == {"x1": 600.0, "y1": 470.0, "x2": 640.0, "y2": 480.0}
    assert validate(response) == []


def test_label_names_and_fallback() -> None:
    response = respond(BOXES, [0.9, 0.8, 0.7, 0.6], [0, 2, 3, 80])
    assert [d["label"] for d in response["detections"]] == ["person", "car", "class_3", "class_80"]
    assert label_name(-1, CLASSES) == "class_-1"
    assert label_name(1, []) == "class_1"


def test_no_detections_in_any_empty_shape() -> None:
    for boxes in (np.zeros((0, 4)), np.zeros((0,))):
        response = respond(boxes, np.zeros((0,)), np.zeros((0,), np.int64))
        assert response["detections"] == []
        assert validate(response) == []


def test_nan_scores_are_dropped() -> None:
    assert scores_of(respond(BOXES[:2], [float("nan"), 0.5], [0, 0])) == [0.5]


def test_accepts_torch_tensors() -> None:
    response = build_response(
        torch.tensor(BOXES, dtype=torch.float32),
        torch.tensor([0.9, 0.1, 0.5, 0.4]),
        torch.tensor([0, 1, 2, 1]),
        CLASSES,
        (480, 640),
        0.3,
        10,
        MODEL,
        {},
    )
    assert scores_of(response) == [0.9, 0.5, 0.4]
    assert response["timings_ms"] == {}


@pytest.mark.parametrize(
    ("boxes", "scores", "labels"),
    [
        (np.zeros((2, 5)), np.zeros(2), np.zeros(2)),
        (np.zeros((2, 4)), np.zeros(3), np.zeros(2)),
        (np.zeros((2, 4)), np.zeros(2), np.zeros(1)),
    ],
)
def test_inconsistent_shapes_are_a_server_bug(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray
) -> None:
    with pytest.raises(ValueError):
        build_response(boxes, scores, labels, CLASSES, (10, 10), 0.5, 10, MODEL, {})


@pytest.mark.parametrize(("threshold", "maximum"), [(-0.1, 10), (1.1, 10), (0.5, -1)])
def test_invalid_arguments(threshold: float, maximum: int) -> None:
    with pytest.raises(ValueError):
        respond(BOXES, [0.9] * 4, [0] * 4, score_threshold=threshold, max_detections=maximum)


# --- the JSON Schema file and its validator ---


def test_schema_file_matches_the_code() -> None:
    schema = load_schema()
    assert schema["properties"]["schema"]["const"] == SCHEMA_ID
    response = respond(BOXES, [0.9, 0.8, 0.7, 0.6], [0, 1, 2, 5])
    assert set(response) == set(schema["required"])
    assert set(response["detections"][0]) == set(schema["properties"]["detections"]["items"]["required"])


def test_schema_catches_real_problems() -> None:
    good = respond(BOXES, [0.9, 0.8, 0.7, 0.6], [0, 1, 2, 5])
    cases = {
        "$": lambda doc: doc.pop("image"),
        "$.schema": lambda doc: doc.update(schema="v2"),
        "$.detections[0].score": lambda doc: doc["detections"][0].update(score=1.5),
        "$.detections[1].label_id": lambda doc: doc["detections"][1].update(label_id=True),
        "$.detections[2].box.x1": lambda doc: doc["detections"][2]["box"].update(x1=-1),
        "$.timings_ms.decode": lambda doc: doc["timings_ms"].update(decode="1"),
        "$.image.width": lambda doc: doc["image"].update(width=1.5),
    }
    for path, corrupt in cases.items():
        document = copy.deepcopy(good)
        corrupt(document)
        problems = validate(document)
        assert [p for p in problems if p.startswith(f"{path}: ")], (path, problems)


def test_additive_fields_stay_valid() -> None:
    document = respond(BOXES, [0.9] * 4, [0] * 4)
    document["request_id"] = "abc"
    document["detections"][0]["mask"] = None
    assert validate(document) == []


def test_schema_is_documented() -> None:
    text = (REPO / "docs" / "schema.md").read_text(encoding="utf-8")
    assert SCHEMA_ID in text and "detections.v1.json" in text
    for field in ("label_id", "score", "x1", "timings_ms", "width"):
        assert field in text
