"""TorchServe handler for Co-DETR: a thin adapter over codetr_serve.runtime.core.DetectorCore.

TorchServe loads this file by path and wants exactly one handler class in it; everything else lives in the
`codetr_serve` package packed beside it in the .mar.
"""

from __future__ import annotations

import logging

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from codetr_serve.runtime.core import DetectorCore
from codetr_serve.runtime.metrics import batch_metrics
from codetr_serve.runtime.settings import settings_from_context

log = logging.getLogger(__name__)

_METRIC_TYPES = {"counter": MetricTypes.COUNTER, "gauge": MetricTypes.GAUGE}


class CoDetrHandler(BaseHandler):
    """initialize -> preprocess (decode) -> inference (one batched forward) -> postprocess (JSON)."""

    def initialize(self, context) -> None:
        # BaseHandler.initialize only knows .pt/.onnx files; the core loads mmdet configs + safetensors.
        self.context = context
        settings = settings_from_context(context, torch.cuda.is_available())
        log.info("co_detr settings: %s", settings)
        self.core = DetectorCore(settings)
        self.core.setup()
        self.initialized = True

    def preprocess(self, data):
        headers = [self.context.get_all_request_header(idx) for idx in range(len(data))]
        return self.core.decode(data, headers)

    def inference(self, data, *args, **kwargs):
        return data, self.core.predict(data)

    def postprocess(self, data):
        items, outputs = data
        replies = self.core.encode(items, outputs)
        for idx, reply in enumerate(replies):
            if reply.status != 200:
                self.context.set_response_status(reply.status, reply.body["error"]["code"], idx)
        self._emit_metrics()
        return [reply.body for reply in replies]

    def _emit_metrics(self) -> None:
        for point in batch_metrics(self.core.last_stats):
            dimensions = [Dimension(name, value) for name, value in point.dimensions]
            self.context.metrics.add_metric(point.name, point.value, point.unit,
                                            dimensions=dimensions, metric_type=_METRIC_TYPES[point.kind])
