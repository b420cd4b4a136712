"""Head-level tests of the Co-DINO query head (``CoDINOHead``) at toy width, on CPU.

The head is built from a config shaped like the official ``query_head`` (only the widths are
small), given random weights, and fed random neck features.
"""

from __future__ import annotations

import copy

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

import codetr_serve.models  # noqa: F401  (registers the Co-DETR types)
from codetr_serve.models.co_dino_head import INFERENCE_ONLY_MSG, CoDINOHead

EMBED = 32
NUM_CLASSES = 6
NUM_QUERY = 60
MAX_PER_IMG = 300
# Neck strides of the five Co-DINO levels; image sizes below are multiples of the coarsest one
# so that each level of an image is an exact crop of the same level of the padded batch.
STRIDES = (8, 16, 32, 64, 128)
SOFT_NMS = dict(type="soft_nms", iou_threshold=0.8)


def _ffn() -> dict:
    # mmcv's BaseTransformerLayer defaults its FFN to 256 dims, so toy widths must say theirs.
    return dict(type="FFN", embed_dims=EMBED, feedforward_channels=64, num_fcs=2, ffn_drop=0.0)


def _deform_attn() -> dict:
    return dict(
        type="MultiScaleDeformableAttention", embed_dims=EMBED, num_heads=4, num_levels=5, dropout=0.0
    )


def head_cfg(test_cfg: dict | None = None) -> dict:
    """The official Co-DINO ``query_head`` config at toy width."""
    encoder_layer = dict(
        type="BaseTransformerLayer",
        attn_cfgs=_deform_attn(),
        ffn_cfgs=_ffn(),
        operation_order=("self_attn", "norm", "ffn", "norm"),
    )
    decoder_layer = dict(
        type="DetrTransformerDecoderLayer",
        attn_cfgs=[
            dict(type="MultiheadAttention", embed_dims=EMBED, num_heads=4, dropout=0.0),
            _deform_attn(),
        ],
        feedforward_channels=64,
        ffn_dropout=0.0,
        ffn_cfgs=_ffn(),
        operation_order=("self_attn", "norm", "cross_attn", "norm", "ffn", "norm"),
    )
    transformer = dict(
        type="CoDinoTransformer",
        with_coord_feat=False,
        num_co_heads=2,
        num_feature_levels=5,
        encoder=dict(type="DetrTransformerEncoder", num_layers=2, with_cp=2, transformerlayers=encoder_layer),
        decoder=dict(
            type="DinoTransformerDecoder",
            num_layers=3,
            return_intermediate=True,
            transformerlayers=decoder_layer,
        ),
    )
    return dict(
        type="CoDINOHead",
        num_query=NUM_QUERY,
        num_classes=NUM_CLASSES,
        in_channels=2048,
        as_two_stage=True,
        dn_cfg=dict(
            label_noise_scale=0.5,
            box_noise_scale=1.0,
            group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=10),
        ),
        transformer=transformer,
        positional_encoding=dict(
            type="SinePositionalEncoding", num_feats=EMBED // 2, temperature=20, normalize=True
        ),
        loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=5.0),
        loss_iou=dict(type="GIoULoss", loss_weight=2.0),
        test_cfg=test_cfg if test_cfg is not None else dict(max_per_img=MAX_PER_IMG, nms=SOFT_NMS),
    )


def build_head(test_cfg: dict | None = None, seed: int = 0) -> CoDINOHead:
    """A head with random weights that exercise every branch."""
    torch.manual_seed(seed)
    head = MODELS.build(head_cfg(test_cfg))
    head.init_weights()
    with torch.no_grad():
        # init_weights zeroes the box deltas; noise makes every layer move the boxes.
        for param in head.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        # Spread the class logits over several units, as a trained classifier does: near-equal
        # scores would make the ranking, and so the comparisons below, depend on rounding.
        for branch in head.cls_branches:
            branch.weight.normal_(std=0.5)
        # Padded cells reach proposal scoring as zero features, i.e. as these biases alone.
        # Zeroing them keeps real cells ahead of padding in the top-k query selection, as
        # trained weights do, so that batch composition cannot change which queries are picked.
        head.transformer.enc_output.bias.zero_()
        head.transformer.enc_output_norm.bias.zero_()
    return head.eval()


def make_sample(
    img_shape: tuple[int, int], batch_shape: tuple[int, int], scale: tuple[float, float] = (0.8, 0.5)
) -> DetDataSample:
    """Metainfo of an image resized by ``scale`` (w, h) to ``img_shape`` and padded to ``batch_shape``."""
    sample = DetDataSample()
    height, width = img_shape
    sample.set_metainfo(
        dict(
            img_shape=img_shape,
            batch_input_shape=batch_shape,
            scale_factor=scale,
            ori_shape=(round(height / scale[1]), round(width / scale[0])),
        )
    )
    return sample


def random_feats(batch: int, shape: tuple[int, int], seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, EMBED, shape[0] // s, shape[1] // s, generator=generator) for s in STRIDES]


@pytest.fixture(scope="module")
def head() -> CoDINOHead:
    return build_head()


def test_official_type_names_resolve_to_our_classes():
    for name in (
        "CoDINOHead",
        "CoDinoTransformer",
        "DinoTransformerDecoder",
        "DetrTransformerEncoder",
        "DetrTransformerDecoderLayer",
    ):
        cls = MODELS.get(name)
        assert cls is not None and cls.__module__.startswith("codetr_serve.models"), name


def test_predict_returns_instances_in_the_original_frame(head):
    shape = (256, 384)
    samples = [make_sample((256, 384), shape), make_sample((128, 256), shape, scale=(0.5, 0.25))]
    with torch.no_grad():
        results = head.predict(random_feats(2, shape), samples, rescale=True)
    assert len(results) == 2
    for result, sample in zip(results, samples, strict=True):
        assert isinstance(result, InstanceData)
        count = len(result)
        assert 0 < count <= MAX_PER_IMG
        assert result.bboxes.shape == (count, 4) and result.bboxes.dtype == torch.float32
        assert result.scores.shape == (count,) and result.labels.shape == (count,)
        assert result.labels.dtype == torch.long
        assert int(result.labels.min()) >= 0 and int(result.labels.max()) < NUM_CLASSES
        assert float(result.scores.min()) > 0 and float(result.scores.max()) <= 1
        ori_h, ori_w = sample.metainfo["ori_shape"]
        boxes = result.bboxes
        assert bool((boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all())
        assert float(boxes[:, 0::2].min()) >= 0 and float(boxes[:, 0::2].max()) <= ori_w + 1e-3
        assert float(boxes[:, 1::2].min()) >= 0 and float(boxes[:, 1::2].max()) <= ori_h + 1e-3


def test_forward_returns_every_layer_and_the_encoder_maps(head):
    shape = (128, 256)
    feats = random_feats(2, shape)
    metas = [make_sample(shape, shape).metainfo] * 2
    with torch.no_grad():
        all_cls, all_boxes, topk_scores, topk_anchors, enc_maps = head(feats, metas)
    assert all_cls.shape == (3, 2, NUM_QUERY, NUM_CLASSES)
    assert all_boxes.shape == (3, 2, NUM_QUERY, 4)
    assert bool(((all_boxes > 0) & (all_boxes < 1)).all())
    assert topk_scores.shape == (2, NUM_QUERY, NUM_CLASSES) and topk_anchors.shape == (2, NUM_QUERY, 4)
    # Queries are ranked by their best encoder class score.
    best = topk_scores.max(-1)[0]
    assert bool((best[:, :-1] >= best[:, 1:]).all())
    assert [tuple(m.shape) for m in enc_maps[:-1]] == [tuple(f.shape) for f in feats]
    assert tuple(enc_maps[-1].shape) == (2, EMBED, 1, 1)


def test_predict_uses_the_last_decoder_layer(head):
    # 256 x 384: the tiny model's downsampled extra level needs more than one cell per GroupNorm group.
    shape = (256, 384)
    feats = random_feats(1, shape)
    samples = [make_sample(shape, shape)]
    with torch.no_grad():
        outs = head(feats, [s.metainfo for s in samples])
        expected = head.predict_by_feat(*outs, batch_img_metas=[s.metainfo for s in samples])
        results = head.predict(feats, samples)
    assert torch.equal(results[0].bboxes, expected[0].bboxes)
    assert torch.equal(results[0].scores, expected[0].scores)
    assert torch.equal(results[0].labels, expected[0].labels)


def test_same_input_twice_gives_identical_detections(head):
    shape = (256, 384)
    samples = [make_sample((256, 384), shape), make_sample((256, 256), shape)]
    feats = random_feats(2, shape)
    with torch.no_grad():
        first = head.predict(feats, samples)
        second = head.predict([f.clone() for f in feats], copy.deepcopy(samples))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.bboxes, b.bboxes)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.labels, b.labels)


def _pad_into_batch(per_image: list[list[torch.Tensor]], batch_shape: tuple[int, int]) -> list[torch.Tensor]:
    """Stack per-image features into a padded batch whose padding holds random junk."""
    generator = torch.Generator().manual_seed(7)
    levels = []
    for lvl, stride in enumerate(STRIDES):
        size = (batch_shape[0] // stride, batch_shape[1] // stride)
        level = torch.randn(len(per_image), EMBED, *size, generator=generator) * 3
        for index, feats in enumerate(per_image):
            height, width = feats[lvl].shape[-2:]
            level[index, :, :height, :width] = feats[lvl][0]
        levels.append(level)
    return levels


BATCH_SHAPES = [(256, 384), (128, 256), (256, 128)]
UNIT_SCALE = (1.0, 1.0)  # boxes stay in resized-image pixels, the unit of the 1e-4 tolerance


def _single_and_batched(head: CoDINOHead) -> tuple[list[InstanceData], list[InstanceData]]:
    """Detections of three differently sized images, one call each and as one padded batch."""
    batch_shape = (256, 384)
    per_image = [random_feats(1, shape, seed=10 + i) for i, shape in enumerate(BATCH_SHAPES)]
    with torch.no_grad():
        single = [
            head.predict(feats, [make_sample(shape, shape, UNIT_SCALE)])[0]
            for feats, shape in zip(per_image, BATCH_SHAPES, strict=True)
        ]
        samples = [make_sample(shape, batch_shape, UNIT_SCALE) for shape in BATCH_SHAPES]
        batched = head.predict(_pad_into_batch(per_image, batch_shape), samples)
    return single, batched


@pytest.fixture(scope="module")
def invariant_head() -> CoDINOHead:
    invariant = build_head()
    invariant.transformer.decoder.batch_invariant = True
    return invariant


def test_batch_invariant_option_makes_padded_batches_match_single_calls(invariant_head):
    single, batched = _single_and_batched(invariant_head)
    for alone, in_batch in zip(single, batched, strict=True):
        assert len(alone) == len(in_batch)
        assert_same_detections(alone, in_batch, atol=1e-4)
        assert_same_detections(in_batch, alone, atol=1e-4)


def test_default_is_the_upstream_formula_which_equals_the_option_without_padding_only(
        head, invariant_head):
    assert head.transformer.decoder.batch_invariant is False
    single, batched = _single_and_batched(invariant_head)
    single_up, batched_up = _single_and_batched(head)
    for ours, theirs in zip(single, single_up, strict=True):
        assert torch.equal(ours.bboxes, theirs.bboxes) and torch.equal(ours.scores, theirs.scores)
    # The full-size image is unpadded in the batch too; the others are padded, which moves
    # every query position under the upstream formula.
    assert_same_detections(batched[0], batched_up[0], atol=1e-4)
    for index in (1, 2):
        with pytest.raises(AssertionError, match="no counterpart"):
            assert_same_detections(batched[index], batched_up[index], atol=1e-4)


def assert_same_detections(expected: InstanceData, actual: InstanceData, atol: float) -> None:
    """Every expected detection has one in ``actual`` with its label and score/box within ``atol``.

    Matched by content rather than by rank: among 300 detections some scores differ by less than
    float rounding, so their order may legitimately swap.
    """
    rows = torch.cat([expected.bboxes, expected.scores[:, None]], 1)
    cols = torch.cat([actual.bboxes, actual.scores[:, None]], 1)
    distance = (rows[:, None, :] - cols[None, :, :]).abs().amax(-1)
    distance[expected.labels[:, None] != actual.labels[None, :]] = float("inf")
    worst = float(distance.min(1)[0].max())
    assert worst <= atol, f"a detection has no counterpart within {atol} (closest at {worst})"


def test_padding_masks_follow_img_shape_inside_batch_input_shape(head):
    batch_shape = (256, 384)
    metas = [make_sample((256, 384), batch_shape).metainfo, make_sample((128, 256), batch_shape).metainfo]
    masks = head.padding_masks(random_feats(2, batch_shape), metas)
    for mask, stride in zip(masks, STRIDES, strict=True):
        assert not bool(mask[0].any())
        valid_h, valid_w = 128 // stride, 256 // stride
        assert not bool(mask[1, :valid_h, :valid_w].any())
        assert bool(mask[1, valid_h:].all()) and bool(mask[1, :, valid_w:].all())


def _logits(best: list[tuple[int, float]]) -> torch.Tensor:
    """(Q, NUM_CLASSES) logits: one high logit per query, very low elsewhere."""
    logits = torch.full((len(best), NUM_CLASSES), -12.0)
    for query, (label, value) in enumerate(best):
        logits[query, label] = value
    return logits


def test_soft_nms_from_test_cfg_decays_same_class_duplicates():
    meta = make_sample((100, 200), (128, 256), scale=(1.0, 1.0)).metainfo
    # Queries 0 and 1 share a box and class 0; query 2 repeats the box in class 1; query 3 is elsewhere.
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2]] * 3 + [[0.8, 0.7, 0.1, 0.2]])
    best = [(0, 4.0), (0, 3.0), (1, 2.0), (0, 1.0)]
    cls_logits = _logits(best)
    head = build_head(dict(max_per_img=4, nms=SOFT_NMS))
    kept = head._predict_by_feat_single(cls_logits, boxes, meta, rescale=True)
    head.test_cfg = dict(max_per_img=4)
    raw = head._predict_by_feat_single(cls_logits, boxes, meta, rescale=True)

    def keyed(result: InstanceData) -> set[tuple[float, int]]:
        return {(round(float(s), 4), int(lbl)) for s, lbl in zip(result.scores, result.labels, strict=True)}

    expected = [(round(float(torch.sigmoid(torch.tensor(v))), 4), label) for label, v in best]
    assert keyed(raw) == set(expected)
    # IoU 1 > 0.8 within class 0: linear soft-NMS scales the copy by (1 - IoU) = 0 and drops it;
    # the same box in another class and the distant box keep their scores.
    assert keyed(kept) == {expected[0], expected[2], expected[3]}
    assert bool((kept.scores[:-1] >= kept.scores[1:]).all())


def test_rescale_false_keeps_boxes_in_the_resized_frame(head):
    shape = (128, 256)
    scale = (0.5, 0.25)
    feats = random_feats(1, shape)
    with torch.no_grad():
        resized = head.predict(feats, [make_sample(shape, shape, scale)], rescale=False)[0]
        original = head.predict(feats, [make_sample(shape, shape, scale)], rescale=True)[0]
    assert float(resized.bboxes[:, 0::2].max()) <= 256 and float(resized.bboxes[:, 1::2].max()) <= 128
    factors = torch.tensor([scale[0], scale[1], scale[0], scale[1]])
    torch.testing.assert_close(original.bboxes * factors, resized.bboxes, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(original.scores, resized.scores)


def test_wrong_number_of_levels_is_rejected(head):
    shape = (128, 256)
    with pytest.raises(ValueError, match="5 feature levels"):
        head.predict(random_feats(1, shape)[:4], [make_sample(shape, shape)])


def test_training_entry_points_raise_a_clear_error(head):
    shape = (128, 256)
    for call in (
        lambda: head.loss(random_feats(1, shape), [make_sample(shape, shape)]),
        lambda: head.loss_aux(random_feats(1, shape)),
        lambda: head.forward_aux(random_feats(1, shape), []),
    ):
        with pytest.raises(NotImplementedError) as error:
            call()
        assert str(error.value) == INFERENCE_ONLY_MSG
    assert (
        INFERENCE_ONLY_MSG
        == "codetr-serve implements inference only; train with the official projects/CO-DETR"
    )
