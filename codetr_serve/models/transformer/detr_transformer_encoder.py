"""``DetrTransformerEncoder``: the Co-DINO encoder (multi-scale deformable self-attention)."""

from __future__ import annotations

from mmdet.registry import MODELS
from torch import Tensor

from .layer_stack import TransformerLayerStack


@MODELS.register_module()
class DetrTransformerEncoder(TransformerLayerStack):
    """Stack of post-norm encoder layers over the flattened multi-scale feature tokens.

    The official configs use mmcv's ``BaseTransformerLayer`` with
    ``MultiScaleDeformableAttention`` and the order ``(self_attn, norm, ffn, norm)``.

    Args:
        transformerlayers: Layer config, see :class:`TransformerLayerStack`.
        num_layers: Number of layers.
        post_norm_cfg: Final norm for pre-norm layers. Co-DINO's layers are post-norm, so no
            final norm exists (and no checkpoint key for one); pre-norm stacks are rejected.
        with_cp: Number of layers to run under activation checkpointing while training.
            Accepted for config compatibility and ignored: it saves memory only in backward.
        init_cfg: mmengine initialisation config.
    """

    def __init__(
        self,
        transformerlayers: dict | list[dict],
        num_layers: int,
        post_norm_cfg: dict | None = None,
        with_cp: int = -1,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(transformerlayers, num_layers, init_cfg=init_cfg)
        if self.pre_norm:
            raise NotImplementedError(
                "codetr-serve supports post-norm encoder layers only " "(as in the official Co-DINO configs)"
            )
        self.post_norm_cfg = post_norm_cfg
        self.with_cp = with_cp

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        padding_mask: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        reference_points: Tensor,
    ) -> Tensor:
        """Encode the flattened feature tokens.

        Args:
            query: Tokens of all levels, shape (S, B, C) (sequence first, as mmcv layers expect).
            query_pos: Sine position + level embedding, shape (S, B, C).
            padding_mask: Shape (B, S), ``True`` on padded tokens (zeroed as attention values).
            spatial_shapes: Shape (L, 2) long, ``(h, w)`` per level.
            level_start_index: Shape (L,) long, first token index of each level.
            reference_points: Shape (B, S, L, 2), see ``encoder_reference_points``.

        Returns:
            Encoded tokens (memory), shape (S, B, C).
        """
        for layer in self.layers:
            query = layer(
                query,
                key=None,
                value=None,
                query_pos=query_pos,
                query_key_padding_mask=padding_mask,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                reference_points=reference_points,
            )
        return query
