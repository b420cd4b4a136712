"""Post-processing of the Co-DINO query head: top-k pairs, box scaling and (soft-)NMS."""

from __future__ import annotations

import pytest
import torch
from mmdet.structures.bbox import bbox_overlaps
from mmengine.structures import InstanceData

from codetr_serve.models.query_postprocess import class_aware_nms, to_image_boxes, top_query_class_pairs

SOFT_NMS = dict(type="soft_nms", iou_threshold=0.8)


def test_sigmoid_pairs_let_one_query_give_several_labels():
    logits = torch.tensor([[3.0, 2.5, -5.0], [-5.0, -5.0, 1.0]])
    scores, labels, queries = top_query_class_pairs(logits, count=3, num_classes=3, use_sigmoid=True)
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([3.0, 2.5, 1.0])))
    assert labels.tolist() == [0, 1, 2] and queries.tolist() == [0, 0, 1]


def test_softmax_pairs_ignore_the_background_column_and_keep_one_label_per_query():
    logits = torch.tensor([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0]])  # last column: background
    scores, labels, queries = top_query_class_pairs(logits, count=5, num_classes=2, use_sigmoid=False)
    probs = torch.softmax(logits, -1)
    assert queries.tolist() == [1, 0] and labels.tolist() == [0, 1]
    torch.testing.assert_close(scores, torch.stack([probs[1, 0], probs[0, 1]]))


def test_boxes_are_scaled_to_img_shape_clipped_and_rescaled():
    meta = dict(img_shape=(100, 200), scale_factor=(0.5, 0.25))
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.95, 0.5, 0.2, 0.2]])
    resized = to_image_boxes(boxes.clone(), meta, rescale=False)
    torch.testing.assert_close(resized, torch.tensor([[80.0, 30.0, 120.0, 70.0], [170.0, 40.0, 200.0, 60.0]]))
    original = to_image_boxes(boxes.clone(), meta, rescale=True)
    torch.testing.assert_close(original, resized / torch.tensor([0.5, 0.25, 0.5, 0.25]))
    with pytest.raises(KeyError, match="scale_factor"):
        to_image_boxes(boxes.clone(), dict(img_shape=(100, 200)), rescale=True)


def _detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> InstanceData:
    return InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32),
        scores=torch.tensor(scores),
        labels=torch.tensor(labels),
    )


def test_soft_nms_decays_a_same_class_overlap_by_one_minus_iou():
    # IoU 0.9 > 0.8 in one class: linear soft-NMS multiplies the weaker score by 0.1.
    results = _detections([[10, 10, 110, 60], [15, 10, 115, 60]], [0.9, 0.6], [3, 3])
    iou = float(bbox_overlaps(results.bboxes[:1], results.bboxes[1:]))
    assert iou > 0.8
    kept = class_aware_nms(results, SOFT_NMS, max_per_img=10)
    torch.testing.assert_close(kept.scores, torch.tensor([0.9, 0.6 * (1 - iou)]))
    torch.testing.assert_close(kept.bboxes, results.bboxes)


def test_soft_nms_leaves_other_classes_and_low_overlaps_alone_and_sorts():
    box = [10.0, 10.0, 110.0, 60.0]
    results = _detections(
        [box, box, [12, 10, 112, 60], [60, 10, 160, 60]], [0.5, 0.7, 0.8, 0.6], [1, 2, 2, 2]
    )
    kept = class_aware_nms(results, SOFT_NMS, max_per_img=10)
    by_score = {round(float(s), 4): int(lbl) for s, lbl in zip(kept.scores, kept.labels, strict=True)}
    iou = float(bbox_overlaps(torch.tensor([box]), torch.tensor([[12.0, 10, 112, 60]])))
    # class 1 alone: kept; class 2: 0.8 kept, 0.7 decayed by the 0.8 box, 0.6 (IoU < 0.8) unchanged.
    assert by_score == {0.8: 2, round(0.7 * (1 - iou), 4): 2, 0.6: 2, 0.5: 1}
    assert bool((kept.scores[:-1] >= kept.scores[1:]).all())


def test_soft_nms_drops_exact_duplicates_and_caps_the_count():
    box = [0.0, 0.0, 50.0, 50.0]
    results = _detections(
        [box, box, [100, 100, 150, 150], [200, 0, 250, 50]], [0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0]
    )
    kept = class_aware_nms(results, SOFT_NMS, max_per_img=2)
    # IoU 1 scales the duplicate to 0, under soft-NMS's min_score; then only the best 2 remain.
    torch.testing.assert_close(kept.scores, torch.tensor([0.9, 0.7]))
    assert len(class_aware_nms(results[:0], SOFT_NMS, max_per_img=2)) == 0
