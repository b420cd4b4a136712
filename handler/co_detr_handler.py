"""TorchServe handler for Co-DETR: a thin adapter over codetr_serve.runtime.core.DetectorCore.

TorchServe loads this file by path and wants exactly one handler class in it; everything else lives in the
`codetr_serve` package packed beside it in the .mar.
"""

from __future__ import annotations

import logging

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from codetr_serve.runtime.after_reply import AfterReply
from codetr_serve.runtime.codec import JSON_CONTENT_TYPE
from codetr_serve.runtime.core import DetectorCore
from codetr_serve.runtime.metrics import MetricPoint, batch_metrics, worker_metrics
from codetr_serve.runtime.settings import settings_from_context

log = logging.getLogger(__name__)

_METRIC_TYPES = {"counter": MetricTypes.COUNTER, "gauge": MetricTypes.GAUGE}


class CoDetrHandler(BaseHandler):
    """initialize -> preprocess (decode) -> inference (batched forwards) -> postprocess (JSON)."""

    def initialize(self, context) -> None:
        # BaseHandler.initialize only knows .pt/.onnx files; the core loads mmdet configs + safetensors.
        self.context = context
        settings = settings_from_context(context, torch.cuda.is_available())
        log.info("co_detr settings: %s", settings)
        self.core = DetectorCore(settings)
        self.core.setup()
        self.after_reply = AfterReply("codetr-metrics")
        self.initialized = True

    def preprocess(self, data):
        # TorchServe's own request ids are the fallback request_id: 0.12 returns them as the x-request-id
        # header (replacing any header a handler sets), so a client that sent no id sees the same one twice.
        indices = range(len(data))
        return self.core.decode(data, [self.context.get_all_request_header(i) for i in indices],
                                [self.context.get_request_id(i) for i in indices])

    def inference(self, data, *args, **kwargs):
        return data, self.core.predict(data)

    def postprocess(self, data):
        items, outputs = data
        replies = self.core.encode(items, outputs)
        for idx, reply in enumerate(replies):
            self.context.set_response_content_type(idx, JSON_CONTENT_TYPE)
            if reply.status != 200:
                self.context.set_response_status(reply.status, reply.reason, idx)
        bodies = [reply.wire_body() for reply in replies]
        self.after_reply.submit(self._metrics_job())  # runs while the worker waits for its next batch
        return bodies

    def _metrics_job(self):
        # The batch's points and request id are taken now; the job runs once the replies are out, when the
        # context may already hold the next batch.
        batch_size = int(self.context.system_properties.get("batch_size") or 1)
        points, metrics = batch_metrics(self.core.last_stats, batch_size), self.context.metrics
        request_id = self.context.get_request_id(0)  # one id per line, not the whole batch's (~37 bytes each)
        return lambda: _emit(metrics, [*points, *worker_metrics()], request_id)


def _emit(metrics, points: list[MetricPoint], request_id: str) -> None:
    """One [METRICS] line per point through TorchServe's metrics cache (the frontend reads them)."""
    for point in points:
        labels = {**dict(point.dimensions), "ModelName": metrics.model_name, "Level": "Model"}
        metric = metrics.get_metric(point.name, _METRIC_TYPES[point.kind])  # declared in metrics.yaml
        metric.add_or_update(point.value, [labels[name] for name in metric.dimension_names], request_id)
