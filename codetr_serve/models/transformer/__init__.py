"""Transformer modules of the Co-DINO query head (registered in mmdet's MODELS on import)."""

from .co_dino_transformer import CoDinoTransformer
from .detr_transformer_decoder_layer import DetrTransformerDecoderLayer
from .detr_transformer_encoder import DetrTransformerEncoder
from .dino_transformer_decoder import DinoTransformerDecoder

__all__ = [
    "CoDinoTransformer",
    "DetrTransformerDecoderLayer",
    "DetrTransformerEncoder",
    "DinoTransformerDecoder",
]
