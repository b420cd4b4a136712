"""``DetrTransformerDecoderLayer``: one Co-DINO decoder layer (self-attn, deformable cross-attn, FFN)."""

from __future__ import annotations

import copy

from mmcv.cnn.bricks.transformer import BaseTransformerLayer
from mmdet.registry import MODELS

_EXPECTED_OPS = {"self_attn", "norm", "cross_attn", "ffn"}


@MODELS.register_module()
class DetrTransformerDecoderLayer(BaseTransformerLayer):
    """mmcv's generic transformer layer, restricted to the six-step DETR decoder order.

    The forward pass is mmcv's (``BaseTransformerLayer.forward``): with the official order
    ``(self_attn, norm, cross_attn, norm, ffn, norm)`` the queries first attend to each other
    (``MultiheadAttention``), then sample the encoder memory (``MultiScaleDeformableAttention``),
    then go through the FFN, each step followed by a residual LayerNorm.

    Args:
        attn_cfgs: Configs of the two attentions, in ``operation_order`` order.
        feedforward_channels: FFN hidden width.
        ffn_dropout: FFN dropout (0 at inference).
        operation_order: Six operations, each of self_attn/norm/cross_attn/ffn.
        act_cfg: FFN activation, used when ``ffn_cfgs`` is not given.
        norm_cfg: Norm layer config.
        ffn_num_fcs: Number of FFN linear layers.
        ffn_cfgs: Full FFN config; the three ``ffn_*``/``feedforward_channels`` arguments above
            override its matching fields, as the official layer does.
        batch_first: Tensor layout of the attentions; the official configs use sequence first.
        init_cfg: mmengine initialisation config.
    """

    def __init__(
        self,
        attn_cfgs: dict | list[dict],
        feedforward_channels: int,
        ffn_dropout: float = 0.0,
        operation_order: tuple[str, ...] | None = None,
        act_cfg: dict | None = None,
        norm_cfg: dict | None = None,
        ffn_num_fcs: int = 2,
        ffn_cfgs: dict | None = None,
        batch_first: bool = False,
        init_cfg: dict | None = None,
    ) -> None:
        if operation_order is None or len(operation_order) != 6 or set(operation_order) != _EXPECTED_OPS:
            raise ValueError(
                f"a DETR decoder layer needs six operations drawn from {_EXPECTED_OPS}, "
                f"got {operation_order}"
            )
        ffn = (
            copy.deepcopy(dict(ffn_cfgs))
            if ffn_cfgs is not None
            else dict(type="FFN", act_cfg=act_cfg or dict(type="ReLU", inplace=True))
        )
        ffn.update(feedforward_channels=feedforward_channels, ffn_drop=ffn_dropout, num_fcs=ffn_num_fcs)
        super().__init__(
            attn_cfgs=attn_cfgs,
            ffn_cfgs=ffn,
            operation_order=operation_order,
            norm_cfg=norm_cfg or dict(type="LN"),
            init_cfg=init_cfg,
            batch_first=batch_first,
        )
