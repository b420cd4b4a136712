"""ONNX export of Co-DINO (tiny config, random weights): the graph's detections equal the PyTorch model's.

One export per module (the slow part; the whole file: 79 s on 2 cores, 5-6 min when 7 agents share
them), then ONNX Runtime on CPU for landscape and portrait canvases at batch 1 and 2, matched order-free
with tight tolerances (codetr_serve/convert/onnx/parity.py). A copy of the file with one attention or
classifier weight nudged by 1 % must fail the same check. The TensorRT form is checked at the level of one
attention module: the plugin node's name, attributes and input types, and its output when the node is
computed as NVIDIA documents it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from codetr_serve.convert.onnx.export import DEFAULT_OPSET, export_onnx
from codetr_serve.convert.onnx.msda import TRT_PLUGIN_NAME, ExportMSDA, LevelShapes, trt_translation
from codetr_serve.convert.onnx.parity import CASES, verify_against_pytorch
from codetr_serve.ops.msda import reference_msda

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    from mmdet.registry import MODELS

    cfg = Config.fromfile(str(REPO / "config" / "co_dino_tiny.py"))
    init_default_scope("mmdet")
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval()


@pytest.fixture(scope="module")
def exported(detector: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(detector, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_graph_is_standard_onnx_with_dynamic_batch_and_size(exported: Path) -> None:
    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}[""] == DEFAULT_OPSET
    images = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in images] == [True, False, True, True]  # batch, 3, height, width
    boxes = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in boxes[1:]] == [100, 4], "K must be the config's max_per_img, static"
    ops = {(node.domain, node.op_type) for node in model.graph.node}
    assert {domain for domain, _ in ops} <= {"", "ai.onnx"}, "the GridSample form must need no custom op"
    assert {("", "GridSample"), ("", "Scan"), ("", "TopK")} <= ops


@pytest.mark.parametrize("case", sorted(CASES))
def test_detections_equal_pytorch(detector: torch.nn.Module, exported: Path, case: str) -> None:
    report = verify_against_pytorch(detector, exported, {case: CASES[case]})
    assert report.ok, report.describe()
    assert all(count > 0 for count in report.cases[0].counts[0]), "a case without detections proves nothing"


# Not a backbone weight: with frozen BN at its initial statistics the backbone is positively homogeneous and
# the neck's GroupNorm divides a 1 % scale away again (measured: parity still holds, as it should).
@pytest.mark.parametrize("weight", ["encoder.layers.0.attentions.0.sampling_offsets.bias",
                                    "query_head.cls_branches.0.bias"])
def test_a_wrong_weight_fails_parity(detector: torch.nn.Module, exported: Path, tmp_path: Path,
                                     weight: str) -> None:
    model = onnx.load(str(exported))
    target = next(i for i in model.graph.initializer if i.name.endswith(weight))
    weights = onnx.numpy_helper.to_array(target) * 1.01
    target.CopyFrom(onnx.numpy_helper.from_array(weights.astype(np.float32), target.name))
    wrong = tmp_path / "wrong.onnx"
    onnx.save(model, str(wrong))
    report = verify_against_pytorch(detector, wrong, {"landscape-b2": CASES["landscape-b2"]})
    assert not report.ok, report.describe()


# --- TensorRT form: one deformable attention module ---------------------------------------------------------
LEVELS = [(6, 8), (3, 4)]


class TrtPluginAsDocumented:
    """NVIDIA's plugin computed from its README: inputs in order, int32 shapes/starts, (N, Lq, M, D) out."""

    @staticmethod
    def make():
        from onnx.reference.op_run import OpRun

        class MultiscaleDeformableAttnPlugin_TRT(OpRun):  # noqa: N801 - the node's op type
            op_domain = "trt"

            def _run(self, value, spatial_shapes, level_start_index, locations, weights,
                     plugin_version=None, plugin_namespace=None):
                assert spatial_shapes.dtype == np.int32 and level_start_index.dtype == np.int32
                sizes = spatial_shapes.prod(1)
                assert (level_start_index == np.concatenate([[0], np.cumsum(sizes)[:-1]])).all()
                batch, _, heads, dims = value.shape
                out = reference_msda(*(torch.from_numpy(a).double() for a in (value,)),
                                     torch.from_numpy(spatial_shapes).long(),
                                     torch.from_numpy(locations).double(), torch.from_numpy(weights).double())
                return (out.view(batch, locations.shape[1], heads, dims).float().numpy(),)

        return MultiscaleDeformableAttnPlugin_TRT


class OneAttention(torch.nn.Module):
    def __init__(self, attention: torch.nn.Module) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, query, value, reference_points, spatial_shapes, level_start_index):
        return self.attention(query, value=value, reference_points=reference_points,
                              spatial_shapes=spatial_shapes, level_start_index=level_start_index)


def _attention_inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(3)
    shapes = torch.tensor(LEVELS)
    starts = torch.tensor([0, LEVELS[0][0] * LEVELS[0][1]])
    tokens = int(shapes.prod(1).sum())
    return (torch.randn(7, 2, 64, generator=generator), torch.randn(tokens, 2, 64, generator=generator),
            torch.rand(2, 7, 2, 2, generator=generator), shapes, starts)


@pytest.mark.parametrize("version", ["1", "2"])
def test_trt_node_follows_the_plugin_contract(version: str, tmp_path: Path) -> None:
    from mmcv.ops import MultiScaleDeformableAttention
    from onnx.reference import ReferenceEvaluator

    torch.manual_seed(0)
    mmcv_attention = MultiScaleDeformableAttention(embed_dims=64, num_heads=4, num_levels=2, num_points=3)
    mmcv_attention.eval()
    mmcv_attention.init_weights()
    inputs = _attention_inputs()
    module = OneAttention(ExportMSDA(mmcv_attention, LevelShapes(), "trt")).eval()
    with torch.no_grad():
        expected = OneAttention(mmcv_attention)(*inputs).numpy()
        program = torch.onnx.export(module, inputs, dynamo=True,
                                    custom_translation_table=trt_translation(version))
    model = program.model_proto
    plugins = [node for node in model.graph.node if node.op_type == TRT_PLUGIN_NAME]
    assert len(plugins) == 1 and plugins[0].domain == "trt" and len(plugins[0].input) == 5
    attributes = {a.name: a.s.decode() for a in plugins[0].attribute}
    assert attributes == {"plugin_version": version, "plugin_namespace": ""}
    evaluator = ReferenceEvaluator(model, new_ops=[TrtPluginAsDocumented.make()])
    feeds = dict(zip([i.name for i in model.graph.input], [t.numpy() for t in inputs], strict=True))
    got = evaluator.run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
