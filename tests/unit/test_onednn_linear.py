"""oneDNN linear layers for the transformer on CPU: the FFN and the attention projections give mmcv's
results up to FP32 summation order (checked against float64), and anything but CPU float32 inference of a
ReLU or exact-GELU FFN (the transformer's and the Swin backbone's) keeps mmcv's own forward."""

from __future__ import annotations

import pytest
import torch
from mmcv.cnn.bricks.transformer import FFN

from codetr_serve.ops import msda, onednn_linear
from tests.unit.test_msda_op import assert_close, built_op, restore_dispatch  # noqa: F401 - fixtures

pytestmark = [pytest.mark.usefixtures("built_op", "restore_dispatch"),
              pytest.mark.skipif(not onednn_linear.supported(), reason="this torch has no oneDNN")]


def ffn_module(act: str = "ReLU") -> FFN:
    torch.manual_seed(0)
    return FFN(256, 512, 2, act_cfg=dict(type=act, inplace=True) if act == "ReLU" else dict(type=act),
               ffn_drop=0.1).eval()


def ops_run(module, *args) -> tuple[torch.Tensor, set[str]]:
    with torch.inference_mode(), torch.profiler.profile() as prof:
        out = module(*args)
    return out, {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("act", ["ReLU", "GELU"])
@pytest.mark.parametrize("layout", ["sequence_first", "transposed_view", "one_image"])
def test_onednn_ffn_equals_mmcv_and_float64(layout, act):
    module = ffn_module(act)
    x = {"sequence_first": torch.randn(300, 2, 256), "one_image": torch.randn(300, 1, 256),
         "transposed_view": torch.randn(2, 300, 256).transpose(0, 1)}[layout]
    identity = torch.randn_like(x)
    assert msda.configure_cpu_msda("fallback") == "fallback" and not onednn_linear.installed()
    theirs, names = ops_run(module, x, identity)
    assert not any("mkldnn" in n for n in names)
    with torch.inference_mode():
        expected = module.double()(x.double(), identity.double())
    module.float()
    assert msda.configure_cpu_msda("auto") == "op" and onednn_linear.installed()
    ours, names = ops_run(module, x, identity)
    assert "mkldnn::_linear_pointwise" in names and "aten::addmm" not in names
    assert_close(ours, theirs, f"{layout}: oneDNN FFN vs mmcv's")
    assert_close(ours, expected, f"{layout}: oneDNN FFN vs float64")


def test_other_ffns_training_and_autograd_keep_mmcv_forward():
    msda.configure_cpu_msda("auto")
    x = torch.randn(50, 1, 256)
    for act in ("Sigmoid", "tanh-GELU"):  # activations oneDNN's FFN path does not take
        module = ffn_module("GELU" if act == "tanh-GELU" else act)
        if act == "tanh-GELU":
            module.layers[0][1].approximate = "tanh"
        _, names = ops_run(module, x)
        assert "mkldnn::_linear_pointwise" not in names, act
    training = ffn_module().train()
    with torch.no_grad(), torch.profiler.profile() as prof:
        training(x)
    assert "mkldnn::_linear_pointwise" not in {e.key for e in prof.key_averages()}
    module = ffn_module()
    module(x).sum().backward()  # grad enabled, parameters require grad: mmcv's differentiable path
    assert module.layers[1].weight.grad is not None


def test_switching_off_restores_mmcv_forward():
    msda.configure_cpu_msda("fallback")
    original = FFN.forward
    assert not hasattr(original, "_codetr_original")
    msda.configure_cpu_msda("auto")
    assert FFN.forward is not original and onednn_linear.installed()
    msda.configure_cpu_msda("auto", onednn=False)
    assert FFN.forward is original and not onednn_linear.installed()
    msda.configure_cpu_msda("auto")
    msda.configure_cpu_msda("fallback")
    assert FFN.forward is original


def test_adopted_linears_follow_the_switch_and_keep_their_state_dict():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(192, 576), torch.nn.GELU(),
                                torch.nn.MultiheadAttention(64, 2), torch.nn.Linear(576, 80))
    keys = list(model.state_dict())
    assert onednn_linear.adopt(model) == 2  # MHA's out_proj is a Linear subclass its owner never calls
    assert type(model[2].out_proj) is not onednn_linear.DispatchingLinear
    assert list(model.state_dict()) == keys and isinstance(model[0], torch.nn.Linear)
    x = torch.randn(2, 49, 192)
    head = torch.nn.Sequential(model[0], model[1])
    msda.configure_cpu_msda("fallback")
    theirs, names = ops_run(head, x)
    assert "aten::addmm" in names and not any("mkldnn" in n for n in names)
    assert torch.equal(theirs, torch.nn.functional.gelu(torch.nn.functional.linear(x, model[0].weight,
                                                                                    model[0].bias)))
    with torch.inference_mode():
        expected = torch.nn.functional.gelu(torch.nn.functional.linear(
            x.double(), model[0].weight.double(), model[0].bias.double()))
    msda.configure_cpu_msda("auto")
    ours, names = ops_run(head, x)
    assert "mkldnn::_linear_pointwise" in names and "aten::addmm" not in names
    assert_close(ours, theirs, "adopted linear vs F.linear")
    assert_close(ours, expected, "adopted linear vs float64")
    head(x).sum().backward()  # grad enabled: F.linear, differentiable
    assert model[0].weight.grad is not None


def test_served_model_adopts_its_linear_layers(tiny_model_dir):
    from codetr_serve.convert.model_dir import CONFIG_NAME
    from codetr_serve.runtime.model_loader import build_detector, load_config

    model = build_detector(load_config(tiny_model_dir / CONFIG_NAME), None, "cpu").model
    plain = [name for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    assert not plain, f"linear layers outside the oneDNN switch: {plain[:5]}"
    assert any(type(m) is onednn_linear.DispatchingLinear for m in model.modules())
