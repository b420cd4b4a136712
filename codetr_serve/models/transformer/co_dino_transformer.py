"""``CoDinoTransformer``: encoder + two-stage query selection + DINO decoder of Co-DINO."""

from __future__ import annotations

import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

from .geometry import PROPOSAL_MARGIN, encoder_proposals, encoder_reference_points, level_valid_ratios


@MODELS.register_module()
class CoDinoTransformer(BaseModule):
    """Transformer of the Co-DINO query head.

    Inference path: flatten the L feature levels into S tokens -> deformable encoder ->
    score every token as a proposal with the extra (last) cls/reg branch -> keep the top
    ``two_stage_num_proposals`` boxes as initial references, paired with learned content
    queries (``query_embed``, "mixed query selection") -> DINO decoder.

    Args:
        encoder: ``DetrTransformerEncoder`` config.
        decoder: ``DinoTransformerDecoder`` config.
        as_two_stage: Must be True (Co-DINO always selects queries from the encoder).
        num_feature_levels: L, the number of feature maps (5 for Co-DINO 5-scale).
        two_stage_num_proposals: Number of decoder queries (the head sets it to ``num_query``).
        mixed_selection: Must be True: content queries are learned, positions come from the
            selected boxes.
        with_pos_coord: Build the projections used by the auxiliary-head queries in training.
        with_coord_feat: Also build the auxiliary feature projections (training only).
        num_co_heads: Number of auxiliary heads the projections are built for.
        init_cfg: mmengine initialisation config.

    The auxiliary projections (``aux_pos_trans*``, ``pos_feats_*``) are not used at inference but
    are built so that official checkpoints load with strict key matching.
    """

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        as_two_stage: bool = True,
        num_feature_levels: int = 4,
        two_stage_num_proposals: int = 300,
        mixed_selection: bool = True,
        with_pos_coord: bool = True,
        with_coord_feat: bool = True,
        num_co_heads: int = 1,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if not (as_two_stage and mixed_selection):
            raise ValueError("Co-DINO requires as_two_stage=True and mixed_selection=True")
        self.as_two_stage = as_two_stage
        self.mixed_selection = mixed_selection
        self.num_feature_levels = num_feature_levels
        self.two_stage_num_proposals = two_stage_num_proposals
        self.with_pos_coord = with_pos_coord
        self.with_coord_feat = with_coord_feat
        self.num_co_heads = num_co_heads
        # Attribute names and creation order reproduce the official state-dict layout.
        self.encoder = MODELS.build(encoder)
        self.decoder = MODELS.build(decoder)
        self.embed_dims = self.encoder.embed_dims
        dims = self.embed_dims
        self.level_embeds = nn.Parameter(torch.zeros(num_feature_levels, dims))
        self.enc_output = nn.Linear(dims, dims)
        self.enc_output_norm = nn.LayerNorm(dims)
        self.query_embed = nn.Embedding(two_stage_num_proposals, dims)
        if with_pos_coord and num_co_heads > 0:
            self._build_aux_projections(dims)

    def _build_aux_projections(self, dims: int) -> None:
        """Layers that turn auxiliary-head positives into decoder queries (training only)."""
        self.aux_pos_trans = nn.ModuleList(nn.Linear(dims * 2, dims) for _ in range(self.num_co_heads))
        self.aux_pos_trans_norm = nn.ModuleList(nn.LayerNorm(dims) for _ in range(self.num_co_heads))
        count = self.num_co_heads if self.with_coord_feat else 0
        self.pos_feats_trans = nn.ModuleList(nn.Linear(dims, dims) for _ in range(count))
        self.pos_feats_norm = nn.ModuleList(nn.LayerNorm(dims) for _ in range(count))

    def init_weights(self) -> None:
        """Xavier for matrices, mmcv's own init for deformable attention, normal embeddings."""
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.init_weights()
        nn.init.normal_(self.level_embeds)
        nn.init.normal_(self.query_embed.weight)
        self._is_init = True

    def flatten_levels(
        self, mlvl_feats: list[Tensor], mlvl_masks: list[Tensor], mlvl_pos_embeds: list[Tensor]
    ) -> tuple:
        """Concatenate all levels into one token sequence.

        Args:
            mlvl_feats: L maps of shape (B, C, h_l, w_l).
            mlvl_masks: L padding masks of shape (B, h_l, w_l).
            mlvl_pos_embeds: L sine position maps of shape (B, C, h_l, w_l).

        Returns:
            ``(tokens (B, S, C), padding_mask (B, S), pos (B, S, C), shapes [(h, w)] * L,
            spatial_shapes (L, 2) long, level_start_index (L,) long, valid_ratios (B, L, 2))``.
        """
        shapes = [tuple(feat.shape[-2:]) for feat in mlvl_feats]
        tokens = torch.cat([feat.flatten(2).transpose(1, 2) for feat in mlvl_feats], 1)
        padding_mask = torch.cat([mask.flatten(1) for mask in mlvl_masks], 1)
        pos = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embeds[lvl].view(1, 1, -1)
                for lvl, pos in enumerate(mlvl_pos_embeds)
            ],
            1,
        )
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=tokens.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([level_valid_ratios(mask) for mask in mlvl_masks], 1)
        return tokens, padding_mask, pos, shapes, spatial_shapes, level_start_index, valid_ratios

    def proposal_inputs(
        self, memory: Tensor, padding_mask: Tensor, shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Per-token features and anchor logits for two-stage proposal scoring.

        Tokens that are padding, or whose anchor touches the image border, get zero features
        and infinite anchor logits, so they can never become a usable box.

        Returns:
            ``(features (B, S, C), anchor_logits (B, S, 4))``.
        """
        anchors = encoder_proposals(padding_mask, shapes)
        usable = ((anchors > PROPOSAL_MARGIN) & (anchors < 1 - PROPOSAL_MARGIN)).all(-1, keepdim=True)
        anchor_logits = torch.log(anchors / (1 - anchors))
        padded = padding_mask.unsqueeze(-1)
        anchor_logits = anchor_logits.masked_fill(padded, float("inf")).masked_fill(~usable, float("inf"))
        features = memory.masked_fill(padded, 0.0).masked_fill(~usable, 0.0)
        return self.enc_output_norm(self.enc_output(features)), anchor_logits

    def select_queries(
        self,
        memory: Tensor,
        padding_mask: Tensor,
        shapes: list[tuple[int, int]],
        cls_branch: nn.Module,
        reg_branch: nn.Module,
    ) -> tuple[Tensor, Tensor]:
        """Pick the highest-scoring encoder tokens as decoder anchors.

        Args:
            memory: Encoder output, shape (B, S, C).
            padding_mask: Shape (B, S).
            shapes: ``(h, w)`` per level.
            cls_branch: Proposal classifier (C -> num classes).
            reg_branch: Proposal box regressor (C -> 4, logit-space offset to the anchor).

        Returns:
            ``(scores (B, K, num classes) logits, box_logits (B, K, 4))`` in descending order of
            the best class score, with ``K = min(two_stage_num_proposals, S)``.
        """
        features, anchor_logits = self.proposal_inputs(memory, padding_mask, shapes)
        class_logits = cls_branch(features)
        box_logits = reg_branch(features) + anchor_logits
        # Upstream cannot run with fewer tokens than queries; we keep the first K queries then.
        k = min(self.two_stage_num_proposals, class_logits.shape[1])
        order = torch.topk(class_logits.max(-1)[0], k, dim=1)[1]
        scores = torch.gather(class_logits, 1, order.unsqueeze(-1).expand(-1, -1, class_logits.shape[-1]))
        boxes = torch.gather(box_logits, 1, order.unsqueeze(-1).expand(-1, -1, 4))
        return scores, boxes

    def forward(
        self,
        mlvl_feats: list[Tensor],
        mlvl_masks: list[Tensor],
        query_embed: Tensor | None,
        mlvl_pos_embeds: list[Tensor],
        dn_label_query: Tensor | None = None,
        dn_bbox_query: Tensor | None = None,
        attn_mask: Tensor | None = None,
        reg_branches: nn.ModuleList | None = None,
        cls_branches: nn.ModuleList | None = None,
    ) -> tuple[Tensor, ...]:
        """Encode, select queries and decode.

        Args:
            mlvl_feats, mlvl_masks, mlvl_pos_embeds: See :meth:`flatten_levels`.
            query_embed: Must be None (queries come from ``self.query_embed``).
            dn_label_query, dn_bbox_query, attn_mask: Denoising queries; training only, must be None.
            reg_branches, cls_branches: The head's ``num_layers + 1`` branches; the last pair
                scores encoder proposals, the others serve the decoder layers.

        Returns:
            ``(states (N, K, B, C), references (N + 1, B, K, 4), topk_scores (B, K, num classes),
            topk_anchors (B, K, 4), memory (B, S, C))`` with N decoder layers and K queries.
        """
        if query_embed is not None or dn_label_query is not None or dn_bbox_query is not None:
            raise NotImplementedError(
                "codetr-serve implements inference only; denoising and external "
                "queries are training features of the official projects/CO-DETR"
            )
        if reg_branches is None or cls_branches is None:
            raise ValueError("CoDinoTransformer needs the head cls_branches and reg_branches")
        tokens, padding_mask, pos, shapes, spatial_shapes, level_start, valid_ratios = self.flatten_levels(
            mlvl_feats, mlvl_masks, mlvl_pos_embeds
        )
        enc_points = encoder_reference_points(shapes, valid_ratios)
        memory = self.encoder(
            tokens.transpose(0, 1), pos.transpose(0, 1), padding_mask, spatial_shapes, level_start, enc_points
        ).transpose(0, 1)
        last = self.decoder.num_layers
        topk_scores, topk_box_logits = self.select_queries(
            memory, padding_mask, shapes, cls_branches[last], reg_branches[last]
        )
        batch, num_queries = topk_box_logits.shape[:2]
        query = self.query_embed.weight[:num_queries, None, :].expand(-1, batch, -1)
        states, references = self.decoder(
            query,
            memory.transpose(0, 1),
            padding_mask,
            topk_box_logits.sigmoid(),
            spatial_shapes,
            level_start,
            valid_ratios,
            reg_branches,
            attn_masks=attn_mask,
        )
        return states, references, topk_scores, topk_box_logits.sigmoid(), memory
