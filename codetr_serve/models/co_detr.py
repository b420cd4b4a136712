"""The Co-DETR detector, registered in mmdet's MODELS as ``CoDETR`` (inference only).

Co-DETR trains a DETR-style query head together with auxiliary one-to-many heads (an RPN + RoI
head and ATSS heads). At test time the official Co-DINO checkpoints are evaluated with the query
head alone (``eval_module='detr'``), so that is the only path implemented here. The auxiliary
heads are still built, because their weights are part of every official checkpoint: the model's
state-dict layout then equals the checkpoint's key for key (tests/unit/test_model_layout.py), and loading
reports any key without a home instead of silently dropping it (runtime/weights.py, ``apply_state_dict``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import OptSampleList, SampleList
from mmdet.utils import OptConfigType, OptMultiConfig
from torch import Tensor, nn

INFERENCE_ONLY = (
    "codetr-serve implements inference only (eval_module='detr', query head); "
    "{what} is not available. Train with the official mmdetection projects/CO-DETR code."
)
EVAL_MODULES = ("detr", "one-stage", "two-stage")


def _stage_cfg(cfgs: Sequence[Any] | None, index: int, key: str | None = None) -> Any:
    """Pick the train/test config of one head from the detector's per-head list.

    The official configs give ``train_cfg``/``test_cfg`` as lists ordered
    [query head, RPN + RoI head(s), ATSS head(s)]; the RPN and RoI entries are dicts with
    ``rpn``/``rcnn`` sub-configs. A missing list, entry or sub-key means "no config".
    """
    if not cfgs or index >= len(cfgs) or cfgs[index] is None:
        return None
    entry = cfgs[index]
    return entry.get(key) if key is not None else entry


def _with_cfgs(head_cfg: dict, train_cfg: Any, test_cfg: Any) -> dict:
    """Copy ``head_cfg`` and attach its train/test configs (the caller's config stays untouched)."""
    cfg = copy.deepcopy(head_cfg)
    cfg.update(train_cfg=copy.deepcopy(train_cfg), test_cfg=copy.deepcopy(test_cfg))
    return cfg


@MODELS.register_module()
class CoDETR(BaseDetector):
    """Co-DETR detector: backbone -> neck -> query head, plus the (unused at test time) aux heads.

    Args:
        backbone: Backbone config, e.g. ResNet-50 or Swin-L.
        neck: Neck config (ChannelMapper producing ``num_outs`` levels of ``embed_dims`` channels).
        query_head: The DETR head config (``CoDINOHead``).
        rpn_head: RPN config of the two-stage auxiliary branch.
        roi_head: List of RoI head configs (``CoStandardRoIHead``), auxiliary.
        bbox_head: List of one-stage auxiliary head configs (``CoATSSHead``).
        train_cfg: Per-head train configs, ordered [query, rpn/rcnn per RoI head, one-stage heads].
        test_cfg: Per-head test configs, same order as ``train_cfg``.
        with_pos_coord: Training option (aux positives fed back as queries); stored, unused here.
        use_lsj: Whether the model was trained with large-scale jitter. Upstream rewrites
            ``img_shape`` to ``batch_input_shape`` on ``data_sample.metainfo`` when it is set,
            but ``metainfo`` is a fresh dict on every access in mmengine, so that rewrite never
            reaches the head. We keep the effective behaviour (no rewrite) so outputs match the
            reference implementation that produced the published numbers.
        eval_module: Which branch produces predictions; only ``'detr'`` is implemented.
        eval_index: Which aux head to evaluate for the other branches; stored, unused here.
        data_preprocessor: ``DetDataPreprocessor`` config.
        init_cfg: mmengine init config.
    """

    def __init__(
        self,
        backbone: dict,
        neck: OptConfigType = None,
        query_head: OptConfigType = None,
        rpn_head: OptConfigType = None,
        roi_head: Sequence[dict | None] | None = None,
        bbox_head: Sequence[dict | None] | None = None,
        train_cfg: Sequence[Any] | None = None,
        test_cfg: Sequence[Any] | None = None,
        with_pos_coord: bool = True,
        use_lsj: bool = True,
        eval_module: str = "detr",
        eval_index: int = 0,
        data_preprocessor: OptConfigType = None,
        init_cfg: OptMultiConfig = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self._check_eval_module(eval_module)
        self.eval_module = eval_module
        self.eval_index = eval_index
        self.with_pos_coord = with_pos_coord
        self.use_lsj = use_lsj
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg

        self.backbone = MODELS.build(backbone)
        if neck is not None:
            self.neck = MODELS.build(neck)
        # Head configs are indexed in the order the official configs list them.
        self.head_idx = 0
        if query_head is not None:
            self.query_head = MODELS.build(
                _with_cfgs(query_head, _stage_cfg(train_cfg, 0), _stage_cfg(test_cfg, 0))
            )
            self.head_idx = 1
        self._build_aux_heads(rpn_head, roi_head or [], bbox_head or [])

    @staticmethod
    def _check_eval_module(eval_module: str) -> None:
        """Fail at build time (not on the first request) for branches we do not serve."""
        if eval_module not in EVAL_MODULES:
            raise ValueError(f"eval_module must be one of {EVAL_MODULES}, got {eval_module!r}")
        if eval_module != "detr":
            raise NotImplementedError(INFERENCE_ONLY.format(what=f"eval_module={eval_module!r}"))

    def _build_aux_heads(
        self, rpn_head: OptConfigType, roi_heads: Sequence[dict | None], bbox_heads: Sequence[dict | None]
    ) -> None:
        """Build the auxiliary heads so their checkpoint weights have somewhere to load."""
        first = self.head_idx
        train_cfg, test_cfg = self.train_cfg, self.test_cfg
        if rpn_head is not None:
            self.rpn_head = MODELS.build(
                _with_cfgs(rpn_head, _stage_cfg(train_cfg, first, "rpn"), _stage_cfg(test_cfg, first, "rpn"))
            )
        self.roi_head = nn.ModuleList()
        for i, cfg in enumerate(roi_heads):
            if cfg:
                self.roi_head.append(
                    MODELS.build(
                        _with_cfgs(
                            cfg,
                            _stage_cfg(train_cfg, first + i, "rcnn"),
                            _stage_cfg(test_cfg, first + i, "rcnn"),
                        )
                    )
                )
        # One-stage heads come after however many RoI heads were actually built.
        offset = first + len(self.roi_head)
        self.bbox_head = nn.ModuleList()
        for i, cfg in enumerate(bbox_heads):
            if cfg:
                self.bbox_head.append(
                    MODELS.build(
                        _with_cfgs(cfg, _stage_cfg(train_cfg, offset + i), _stage_cfg(test_cfg, offset + i))
                    )
                )

    @property
    def with_query_head(self) -> bool:
        """bool: whether the detector has a query (DETR) head."""
        return getattr(self, "query_head", None) is not None

    @property
    def with_rpn(self) -> bool:
        """bool: whether the detector has the auxiliary RPN."""
        return getattr(self, "rpn_head", None) is not None

    @property
    def with_roi_head(self) -> bool:
        """bool: whether at least one auxiliary RoI head is built."""
        return len(self.roi_head) > 0

    @property
    def with_bbox(self) -> bool:
        """bool: whether any auxiliary box head (RoI or one-stage) is built."""
        return self.with_roi_head or len(self.bbox_head) > 0

    @property
    def with_shared_head(self) -> bool:
        """bool: whether the first RoI head has a shared head (BaseDetector assumes one RoI head)."""
        return self.with_roi_head and self.roi_head[0].with_shared_head

    @property
    def with_mask(self) -> bool:
        """bool: Co-DINO detects boxes only; kept for BaseDetector's interface."""
        return any(head.with_mask for head in self.roi_head)

    def extract_feat(self, batch_inputs: Tensor) -> tuple[Tensor, ...]:
        """Run backbone and neck.

        Args:
            batch_inputs: Normalized, padded images, shape (B, 3, H, W).

        Returns:
            One feature map per level, shape (B, C, H_l, W_l); 5 levels for Co-DINO 5-scale
            (strides 4..64 for R50 / Swin-L).
        """
        feats = self.backbone(batch_inputs)
        if self.with_neck:
            feats = self.neck(feats)
        return tuple(feats)

    def _require_query_head(self) -> nn.Module:
        if not self.with_query_head:
            raise NotImplementedError(INFERENCE_ONLY.format(what="a model without query_head"))
        return self.query_head

    def predict(
        self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True
    ) -> SampleList:
        """Detect objects with the query head.

        Args:
            batch_inputs: Normalized, padded images, shape (B, 3, H, W).
            batch_data_samples: One ``DetDataSample`` per image whose metainfo holds
                ``img_shape`` (resized, unpadded (h, w)) and, with ``rescale=True``,
                ``scale_factor`` (w, h); ``ori_shape`` is carried along for the caller.
                ``batch_input_shape`` ((H, W) of ``batch_inputs``, set by
                ``DetDataPreprocessor``) is filled in here when missing.
            rescale: Map boxes back to the original image size.

        Returns:
            The same data samples with ``pred_instances`` set: ``bboxes`` (N, 4) xyxy,
            ``scores`` (N,), ``labels`` (N,).
        """
        head = self._require_query_head()
        self._fill_batch_input_shape(batch_inputs, batch_data_samples)
        feats = self.extract_feat(batch_inputs)
        results = head.predict(feats, batch_data_samples, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(self, batch_inputs: Tensor, batch_data_samples: OptSampleList = None) -> tuple:
        """Raw query-head outputs without post-processing (``mode='tensor'``).

        Without data samples every image is taken as unpadded (``img_shape`` equals the
        input size), which is what tracing/FLOP counting tools need.
        """
        head = self._require_query_head()
        feats = self.extract_feat(batch_inputs)
        return head.forward(feats, self._batch_img_metas(batch_inputs, batch_data_samples))

    @staticmethod
    def _fill_batch_input_shape(batch_inputs: Tensor, batch_data_samples: SampleList) -> None:
        """Callers that skip DetDataPreprocessor often omit it, and it can only be this value."""
        shape = tuple(batch_inputs.shape[-2:])
        for sample in batch_data_samples:
            if "batch_input_shape" not in sample:
                sample.set_metainfo(dict(batch_input_shape=shape))

    @staticmethod
    def _batch_img_metas(batch_inputs: Tensor, batch_data_samples: OptSampleList) -> list[dict]:
        shape = tuple(batch_inputs.shape[-2:])
        if batch_data_samples is not None:
            CoDETR._fill_batch_input_shape(batch_inputs, batch_data_samples)
            return [sample.metainfo for sample in batch_data_samples]
        return [dict(img_shape=shape, batch_input_shape=shape, pad_shape=shape) for _ in batch_inputs]

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict[str, torch.Tensor]:
        """Training is out of scope: always raises ``NotImplementedError``."""
        raise NotImplementedError(INFERENCE_ONLY.format(what="CoDETR.loss (training)"))
