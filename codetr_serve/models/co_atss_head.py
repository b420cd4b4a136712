"""``CoATSSHead``: the ATSS auxiliary head of Co-DETR, for checkpoint compatibility.

In Co-DETR the ATSS head is a one-to-many training aid: its positive anchors are turned into
extra queries for the DETR head. It does not take part in ``eval_module='detr'`` inference, but
its parameters (``cls_convs``, ``reg_convs``, ``atss_cls``, ``atss_reg``, ``atss_centerness``,
``scales``) are in every official checkpoint. mmdet's ``ATSSHead`` already owns exactly those
parameters, so subclassing it gives the official state-dict layout; only the Co-DETR training
targets are missing, and asking for a loss says so.
"""

from __future__ import annotations

from typing import NoReturn

from mmdet.models.dense_heads import ATSSHead
from mmdet.registry import MODELS

from .co_detr import INFERENCE_ONLY


@MODELS.register_module()
class CoATSSHead(ATSSHead):
    """ATSS head with Co-DETR's name; inference (``predict``) is mmdet's ``ATSSHead`` unchanged.

    Inputs to ``forward``/``predict`` are the 6 feature maps the query head re-emits
    (each (B, C, H_l, W_l)); outputs per level: scores (B, A*num_classes, H_l, W_l),
    deltas (B, A*4, H_l, W_l), centerness (B, A, H_l, W_l).
    """

    def loss(self, *args: object, **kwargs: object) -> NoReturn:
        """Training only: raises ``NotImplementedError``."""
        raise NotImplementedError(INFERENCE_ONLY.format(what="CoATSSHead.loss (training)"))

    def loss_by_feat(self, *args: object, **kwargs: object) -> NoReturn:
        """Training only: raises ``NotImplementedError`` (also guards ``loss_and_predict``)."""
        raise NotImplementedError(INFERENCE_ONLY.format(what="CoATSSHead.loss_by_feat (training)"))
