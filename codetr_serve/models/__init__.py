"""Co-DETR modules for mmdet 3.x; importing this package registers them in mmdet's registries.

The official Co-DETR configs name these types and load them through ``custom_imports``
(``imports=['codetr_serve.models']`` in config/).
"""

from .co_atss_head import CoATSSHead
from .co_detr import CoDETR
from .co_dino_head import CoDINOHead
from .co_roi_head import CoStandardRoIHead
from .test_scale import apply_test_scale
from .transformer import (
    CoDinoTransformer,
    DetrTransformerDecoderLayer,
    DetrTransformerEncoder,
    DinoTransformerDecoder,
)

__all__ = ["CoATSSHead", "CoDETR", "CoStandardRoIHead", "apply_test_scale"]
__all__ += [
    "CoDINOHead",
    "CoDinoTransformer",
    "DetrTransformerDecoderLayer",
    "DetrTransformerEncoder",
    "DinoTransformerDecoder",
]
