"""``CoDINOHead``: the Co-DINO query head (inference path).

At test time Co-DETR detects with this head alone: the neck's feature levels go through the
``CoDinoTransformer``; the last decoder layer's queries become class scores and boxes through
the matching ``cls_branches``/``reg_branches``; the best ``max_per_img`` (query, class) pairs are
kept and soft-NMS runs as ``test_cfg`` says.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from mmdet.models.layers import CdnQueryGenerator
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import InstanceList
from mmengine.model import BaseModule, bias_init_with_prob
from mmengine.structures import InstanceData
from torch import Tensor, nn

from .query_postprocess import class_aware_nms, to_image_boxes, top_query_class_pairs
from .transformer.dino_transformer_decoder import REFINE_EPS

INFERENCE_ONLY_MSG = "codetr-serve implements inference only; train with the official projects/CO-DETR"
DEFAULT_POSITIONAL_ENCODING = dict(type="SinePositionalEncoding", num_feats=128, normalize=True)
# mmdet DETRHead's default classifier: softmax over the classes plus a background column.
DEFAULT_LOSS_CLS = dict(type="CrossEntropyLoss", use_sigmoid=False)


@MODELS.register_module()
class CoDINOHead(BaseModule):
    """Co-DINO query head; accepts the official ``query_head`` config unchanged.

    Args:
        num_classes: Number of object classes.
        num_query: Number of decoder queries (top-k encoder proposals).
        transformer: ``CoDinoTransformer`` config.
        in_channels: Accepted for config compatibility (the neck already maps to embed dims).
        max_pos_coords, use_zero_padding: Auxiliary-query settings, training only.
        dn_cfg: Denoising settings; builds ``dn_generator`` whose label embedding is part of
            the checkpoint (denoising itself is training only).
        positional_encoding: Config of the sine encoding of every feature level.
        as_two_stage: Must be True.
        embed_dims: Ignored; the width is taken from the transformer.
        num_reg_fcs: Hidden linear layers of each box-regression MLP.
        sync_cls_avg_factor, share_pred_layer, num_pred_layer, loss_bbox, loss_iou: Training
            options of mmdet's DETR heads, accepted and unused (``share_pred_layer`` must be False).
        loss_cls: Only ``use_sigmoid`` is read: sigmoid scores per class, or softmax with a
            background column.
        train_cfg: Kept for reference, unused.
        test_cfg: ``max_per_img``, optional ``score_thr`` and optional ``nms`` (mmcv
            ``batched_nms`` config, e.g. ``dict(type='soft_nms', iou_threshold=0.8)``).
        init_cfg: mmengine initialisation config.
    """

    def __init__(
        self,
        num_classes: int,
        num_query: int = 900,
        transformer: dict | None = None,
        in_channels: int = 2048,
        max_pos_coords: int = 300,
        dn_cfg: dict | None = None,
        use_zero_padding: bool = False,
        positional_encoding: dict | None = None,
        as_two_stage: bool = True,
        embed_dims: int = 256,
        num_reg_fcs: int = 2,
        sync_cls_avg_factor: bool = False,
        share_pred_layer: bool = False,
        num_pred_layer: int = 6,
        loss_cls: dict | None = None,
        loss_bbox: dict | None = None,
        loss_iou: dict | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if transformer is None or not as_two_stage or share_pred_layer:
            raise ValueError(
                "CoDINOHead needs a transformer config, as_two_stage=True, share_pred_layer=False"
            )
        self.num_classes = num_classes
        self.num_query = num_query
        self.in_channels = in_channels
        self.max_pos_coords = max_pos_coords
        self.use_zero_padding = use_zero_padding
        self.as_two_stage = as_two_stage
        self.num_reg_fcs = num_reg_fcs
        self.use_sigmoid = bool((loss_cls or DEFAULT_LOSS_CLS).get("use_sigmoid", False))
        self.cls_out_channels = num_classes if self.use_sigmoid else num_classes + 1
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg if test_cfg is not None else dict(max_per_img=100)
        # Creation order below reproduces the official state-dict key order.
        self.transformer = MODELS.build(self._transformer_cfg(transformer))
        self.embed_dims = self.transformer.embed_dims
        self._build_branches()
        self.positional_encoding = MODELS.build(
            copy.deepcopy(positional_encoding or DEFAULT_POSITIONAL_ENCODING)
        )
        if self.positional_encoding.num_feats * 2 != self.embed_dims:
            raise ValueError(f"positional_encoding.num_feats must be embed_dims / 2 = {self.embed_dims // 2}")
        if dn_cfg is not None:
            self.dn_generator = CdnQueryGenerator(
                num_classes=num_classes,
                embed_dims=self.embed_dims,
                num_matching_queries=num_query,
                **copy.deepcopy(dict(dn_cfg)),
            )

    def _transformer_cfg(self, transformer: dict) -> dict:
        """Complete the transformer config the way the official head does."""
        cfg = copy.deepcopy(transformer)
        proposals = cfg.get("two_stage_num_proposals", self.num_query)
        if proposals != self.num_query:
            raise ValueError("two_stage_num_proposals must equal num_query for Co-DINO")
        cfg.update(two_stage_num_proposals=self.num_query, as_two_stage=True, mixed_selection=True)
        return cfg

    def _build_branches(self) -> None:
        """One classifier and one box MLP per decoder layer, plus one pair for the encoder."""
        dims, layers = self.embed_dims, self.transformer.decoder.num_layers + 1
        self.cls_branches = nn.ModuleList(nn.Linear(dims, self.cls_out_channels) for _ in range(layers))
        self.reg_branches = nn.ModuleList(self._box_mlp(dims) for _ in range(layers))
        # Extra coarser level fed to the auxiliary heads (training / non-'detr' eval modules).
        self.downsample = nn.Sequential(
            nn.Conv2d(dims, dims, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, dims)
        )

    def _box_mlp(self, dims: int) -> nn.Sequential:
        hidden = []
        for _ in range(self.num_reg_fcs):
            hidden += [nn.Linear(dims, dims), nn.ReLU()]
        return nn.Sequential(*hidden, nn.Linear(dims, 4))

    def init_weights(self) -> None:
        """Transformer init, 1 % prior probability for sigmoid classifiers, zero box deltas."""
        self.transformer.init_weights()
        if self.use_sigmoid:
            for branch in self.cls_branches:
                nn.init.constant_(branch.bias, bias_init_with_prob(0.01))
        for branch in self.reg_branches:
            nn.init.zeros_(branch[-1].weight)
            nn.init.zeros_(branch[-1].bias)
        self._is_init = True

    def padding_masks(self, mlvl_feats: list[Tensor], img_metas: list[dict]) -> list[Tensor]:
        """Per-level padding masks from each image's ``img_shape`` inside ``batch_input_shape``.

        Returns:
            L bool masks of shape (B, h_l, w_l), ``True`` where the feature cell is padding.
        """
        pad_h, pad_w = img_metas[0]["batch_input_shape"]
        image_mask = mlvl_feats[0].new_ones((len(img_metas), pad_h, pad_w))
        for index, meta in enumerate(img_metas):
            height, width = meta["img_shape"][:2]
            image_mask[index, :height, :width] = 0
        # Nearest-neighbour resize, as the trained model saw it.
        return [
            F.interpolate(image_mask[None], size=feat.shape[-2:]).to(torch.bool).squeeze(0)
            for feat in mlvl_feats
        ]

    def run_transformer(
        self, mlvl_feats: list[Tensor] | tuple[Tensor, ...], img_metas: list[dict]
    ) -> tuple[Tensor, ...]:
        """Masks + positions + transformer; see ``CoDinoTransformer.forward`` for the outputs."""
        levels = self.transformer.num_feature_levels
        if len(mlvl_feats) != levels or len(img_metas) != mlvl_feats[0].shape[0]:
            raise ValueError(
                f"expected {levels} feature levels and one img_meta per image, got "
                f"{len(mlvl_feats)} levels for {len(img_metas)} metas"
            )
        masks = self.padding_masks(list(mlvl_feats), img_metas)
        positions = [self.positional_encoding(mask) for mask in masks]
        return self.transformer(
            list(mlvl_feats),
            masks,
            None,
            positions,
            reg_branches=self.reg_branches,
            cls_branches=self.cls_branches,
        )

    def layer_outputs(self, index: int, hidden: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (B, Q, cls_out_channels) and sigmoid cxcywh boxes (B, Q, 4) of one layer.

        ``hidden`` (B, Q, C) is the layer's normalised output and ``reference`` (B, Q, 4) the box
        that layer started from; the regression branch predicts a logit-space offset to it.
        """
        delta = self.reg_branches[index](hidden)
        boxes = (delta + inverse_sigmoid(reference, eps=REFINE_EPS)).sigmoid()
        return self.cls_branches[index](hidden), boxes

    def forward(
        self,
        mlvl_feats: list[Tensor] | tuple[Tensor, ...],
        img_metas: list[dict],
        dn_label_query: Tensor | None = None,
        dn_bbox_query: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple:
        """Raw outputs of every decoder layer (official return layout).

        Args:
            mlvl_feats: L neck maps of shape (B, C, h_l, w_l).
            img_metas: One dict per image with ``img_shape`` and ``batch_input_shape``.
            dn_label_query, dn_bbox_query, attn_mask: Training-time denoising; must be None.

        Returns:
            ``(all_cls_scores (N, B, Q, cls_out), all_bbox_preds (N, B, Q, 4) sigmoid cxcywh,
            topk_scores (B, Q, cls_out), topk_anchors (B, Q, 4), enc_maps)`` where ``enc_maps``
            holds the encoder memory as L maps (B, C, h_l, w_l) plus one downsampled map.
        """
        if dn_label_query is not None or dn_bbox_query is not None or attn_mask is not None:
            raise NotImplementedError(INFERENCE_ONLY_MSG)
        states, references, topk_scores, topk_anchors, memory = self.run_transformer(mlvl_feats, img_metas)
        hidden = states.permute(0, 2, 1, 3)
        per_layer = [self.layer_outputs(i, hidden[i], references[i]) for i in range(hidden.shape[0])]
        all_cls = torch.stack([cls for cls, _ in per_layer])
        all_boxes = torch.stack([boxes for _, boxes in per_layer])
        return all_cls, all_boxes, topk_scores, topk_anchors, self.memory_maps(memory, mlvl_feats)

    def memory_maps(self, memory: Tensor, mlvl_feats: list[Tensor] | tuple[Tensor, ...]) -> list[Tensor]:
        """Reshape memory (B, S, C) back into per-level maps and append ``downsample`` of the last."""
        maps, start = [], 0
        for feat in mlvl_feats:
            batch, channels, height, width = feat.shape
            chunk = memory[:, start : start + height * width]
            maps.append(chunk.transpose(1, 2).reshape(batch, channels, height, width))
            start += height * width
        maps.append(self.downsample(maps[-1]))
        return maps

    def predict(
        self, feats: list[Tensor] | tuple[Tensor, ...], batch_data_samples: SampleList, rescale: bool = True
    ) -> InstanceList:
        """Detect objects.

        Args:
            feats: L neck maps of shape (B, C, h_l, w_l).
            batch_data_samples: One sample per image; metainfo needs ``img_shape`` and
                ``batch_input_shape``, and ``scale_factor`` (w, h) when ``rescale``.
            rescale: Return boxes in the original image frame.

        Returns:
            One ``InstanceData`` per image with ``bboxes`` (N, 4) xyxy, ``scores`` (N,) and
            ``labels`` (N,) long, N <= ``test_cfg['max_per_img']``, sorted by score when NMS ran.
        """
        img_metas = [sample.metainfo for sample in batch_data_samples]
        states, references = self.run_transformer(feats, img_metas)[:2]
        # Only the last decoder layer is needed at test time.
        last = states.shape[0] - 1
        cls_scores, boxes = self.layer_outputs(last, states[last].transpose(0, 1), references[last])
        return self.predict_by_feat(cls_scores[None], boxes[None], None, None, None, img_metas, rescale)

    def predict_by_feat(
        self,
        all_cls_scores: Tensor,
        all_bbox_preds: Tensor,
        enc_cls_scores: Tensor | None,
        enc_bbox_preds: Tensor | None,
        enc_outputs: list[Tensor] | None,
        batch_img_metas: list[dict],
        rescale: bool = True,
    ) -> InstanceList:
        """Post-process the last layer of :meth:`forward`'s outputs (encoder outputs unused)."""
        return [
            self._predict_by_feat_single(cls, boxes, meta, rescale)
            for cls, boxes, meta in zip(all_cls_scores[-1], all_bbox_preds[-1], batch_img_metas, strict=True)
        ]

    def _predict_by_feat_single(
        self, cls_score: Tensor, bbox_pred: Tensor, img_meta: dict, rescale: bool = True
    ) -> InstanceData:
        """Detections of one image from (Q, cls_out) logits and (Q, 4) sigmoid cxcywh boxes."""
        max_per_img = self.test_cfg.get("max_per_img", self.num_query)
        scores, labels, query_index = top_query_class_pairs(
            cls_score, max_per_img, self.num_classes, self.use_sigmoid
        )
        score_thr = self.test_cfg.get("score_thr", 0)
        if score_thr > 0:
            keep = scores > score_thr
            scores, labels, query_index = scores[keep], labels[keep], query_index[keep]
        boxes = to_image_boxes(bbox_pred[query_index], img_meta, rescale)
        results = InstanceData(bboxes=boxes, scores=scores, labels=labels)
        nms_cfg = self.test_cfg.get("nms", None)
        return class_aware_nms(results, nms_cfg, max_per_img) if nms_cfg else results

    def loss(self, *args, **kwargs) -> dict:
        """Training is not implemented here."""
        raise NotImplementedError(INFERENCE_ONLY_MSG)

    def loss_aux(self, *args, **kwargs) -> dict:
        """Auxiliary-query training is not implemented here."""
        raise NotImplementedError(INFERENCE_ONLY_MSG)

    def forward_aux(self, *args, **kwargs) -> tuple:
        """Auxiliary-query decoding exists only for training."""
        raise NotImplementedError(INFERENCE_ONLY_MSG)
