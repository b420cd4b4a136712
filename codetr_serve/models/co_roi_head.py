"""``CoStandardRoIHead``: the Faster R-CNN style auxiliary RoI head of Co-DETR.

Like the ATSS head it only feeds extra positive queries to the DETR head during training.
Its weights (``bbox_head.shared_fcs``, ``fc_cls``, ``fc_reg``) are in the official checkpoints and
mmdet's ``StandardRoIHead`` with a ``Shared2FCBBoxHead`` owns exactly those parameters, so the
subclass loads them as they are; the Co-DETR training logic is deliberately absent.
"""

from __future__ import annotations

from typing import NoReturn

from mmdet.models.roi_heads import StandardRoIHead
from mmdet.registry import MODELS

from .co_detr import INFERENCE_ONLY


@MODELS.register_module()
class CoStandardRoIHead(StandardRoIHead):
    """Standard RoI head under Co-DETR's name; ``predict`` is mmdet's, unchanged.

    ``predict(x, rpn_results_list, batch_data_samples)`` takes the multi-level features
    (each (B, C, H_l, W_l)) and per-image proposals (InstanceData with ``bboxes`` (P, 4)).
    """

    def loss(self, *args: object, **kwargs: object) -> NoReturn:
        """Training only: raises ``NotImplementedError``."""
        raise NotImplementedError(INFERENCE_ONLY.format(what="CoStandardRoIHead.loss (training)"))

    def bbox_loss(self, *args: object, **kwargs: object) -> NoReturn:
        """Training only: raises ``NotImplementedError``."""
        raise NotImplementedError(INFERENCE_ONLY.format(what="CoStandardRoIHead.bbox_loss (training)"))
