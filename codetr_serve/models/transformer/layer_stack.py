"""Common base of the Co-DINO encoder and decoder: a stack of identical transformer layers."""

from __future__ import annotations

import copy

from mmdet.registry import MODELS
from mmengine.model import BaseModule, ModuleList
from mmengine.utils import is_list_of


class TransformerLayerStack(BaseModule):
    """Holds ``num_layers`` layers built from ``transformerlayers`` as ``self.layers``.

    It takes the same arguments as mmcv's ``TransformerLayerSequence`` (the official configs
    are written for it) but builds the layers through mmdet's registry: our
    ``DetrTransformerDecoderLayer`` lives there, and mmcv's builder looks only in the root
    registry unless a default scope happens to be set.

    Args:
        transformerlayers: One layer config (copied ``num_layers`` times) or a list of them.
        num_layers: Number of layers.
        init_cfg: mmengine initialisation config.
    """

    def __init__(
        self, transformerlayers: dict | list[dict], num_layers: int, init_cfg: dict | None = None
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if isinstance(transformerlayers, dict):
            layer_cfgs = [copy.deepcopy(transformerlayers) for _ in range(num_layers)]
        elif is_list_of(transformerlayers, dict) and len(transformerlayers) == num_layers:
            layer_cfgs = [copy.deepcopy(cfg) for cfg in transformerlayers]
        else:
            raise ValueError("transformerlayers must be a dict or a list of num_layers dicts")
        self.num_layers = num_layers
        self.layers = ModuleList([MODELS.build(cfg) for cfg in layer_cfgs])
        self.embed_dims = self.layers[0].embed_dims
        self.pre_norm = self.layers[0].pre_norm
