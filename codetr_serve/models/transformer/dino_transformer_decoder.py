"""``DinoTransformerDecoder``: DINO decoder with iterative box refinement."""

from __future__ import annotations

import torch
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.registry import MODELS
from torch import Tensor, nn

from .geometry import box_sine_embedding
from .layer_stack import TransformerLayerStack

# Clamp used when turning reference boxes back into logits; part of the trained model's math.
REFINE_EPS = 1e-3


@MODELS.register_module()
class DinoTransformerDecoder(TransformerLayerStack):
    """Decoder whose queries carry a reference box that every layer refines.

    Before each layer the current reference box is sine-embedded and projected by
    ``ref_point_head`` into the query position; after the layer, ``reg_branches[i]`` predicts a
    logit-space offset that yields the next reference box.

    Args:
        transformerlayers: Layer config (``DetrTransformerDecoderLayer``).
        num_layers: Number of layers.
        return_intermediate: Must be True: the query head reads every layer's output.
        batch_invariant: Where the query position comes from. False (default): the box rescaled
            to the padded level-0 map, the exact upstream formula. The reference pads even a
            single image to the size divisor (32), so only this reproduces its detections; the
            serving core batches only images that share a padded canvas, which keeps batched
            results equal to single calls under this formula. True: the reference box normalised
            to the image's valid area, so detections do not depend on how much padding a batch
            adds, at the price of differing from the reference for every padded image.
        init_cfg: mmengine initialisation config.
    """

    def __init__(
        self,
        transformerlayers: dict | list[dict],
        num_layers: int,
        return_intermediate: bool = True,
        batch_invariant: bool = False,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(transformerlayers, num_layers, init_cfg=init_cfg)
        if not return_intermediate:
            raise ValueError("the Co-DINO query head needs return_intermediate=True")
        self.return_intermediate = return_intermediate
        self.batch_invariant = batch_invariant
        dims = self.embed_dims
        # Names and layout (Linear, ReLU, Linear) fixed by the official checkpoints.
        self.ref_point_head = nn.Sequential(nn.Linear(dims * 2, dims), nn.ReLU(), nn.Linear(dims, dims))
        self.norm = nn.LayerNorm(dims)

    def forward(
        self,
        query: Tensor,
        value: Tensor,
        key_padding_mask: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        reg_branches: nn.ModuleList,
        attn_masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run all layers.

        Args:
            query: Content queries, shape (Q, B, C).
            value: Encoder memory, shape (S, B, C).
            key_padding_mask: Shape (B, S), ``True`` on padded tokens.
            reference_points: Initial boxes, shape (B, Q, 4), normalised cxcywh of the valid image.
            spatial_shapes: Shape (L, 2) long.
            level_start_index: Shape (L,) long.
            valid_ratios: Shape (B, L, 2).
            reg_branches: At least ``num_layers`` box-refinement MLPs (C -> 4).
            attn_masks: Optional self-attention mask (training-time denoising groups).

        Returns:
            ``(states, references)``: normalised layer outputs, shape (num_layers, Q, B, C), and
            the reference boxes, shape (num_layers + 1, B, Q, 4): the initial boxes, then the
            boxes refined by each layer.
        """
        to_padded = torch.cat([valid_ratios, valid_ratios], -1)[:, None]
        states, references = [], [reference_points]
        for index, layer in enumerate(self.layers):
            level_points = reference_points[:, :, None] * to_padded
            position = reference_points if self.batch_invariant else level_points[:, :, 0, :]
            sine = box_sine_embedding(position, self.embed_dims // 2)
            query_pos = self.ref_point_head(sine).permute(1, 0, 2)
            query = layer(
                query,
                key=None,
                value=value,
                query_pos=query_pos,
                attn_masks=attn_masks,
                key_padding_mask=key_padding_mask,
                reference_points=level_points,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
            )
            offset = reg_branches[index](query.permute(1, 0, 2))
            refined = (offset + inverse_sigmoid(reference_points, eps=REFINE_EPS)).sigmoid()
            # Gradients do not flow through the box chain between layers (DINO design).
            reference_points = refined.detach()
            states.append(self.norm(query))
            references.append(refined)
        return torch.stack(states), torch.stack(references)
