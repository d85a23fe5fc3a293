"""MobileNetV2 as smp's DeepLab encoder: the spec against smp's dilated modules, the scratch forward and
backward against the PyTorch twin (float64 gradients vs autograd), smp's DeepLabV3Plus / DeepLabV3 loading,
ReLU6, and bad input."""

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from minideeplab import interop, scratch
from minideeplab.reference import layers as ref_layers
from minideeplab.scratch import backbone as sb
from minideeplab.scratch import layers
from minideeplab.scratch import mobilenet_v2 as smb
from minideeplab.specs.deeplab import make_config
from minideeplab.specs.mobilenet_v2 import MobileNetV2

from helpers import backbone_matches_autograd, nontrivial_module, rel
from test_xception import _random, _x

F32, F64 = np.float32, np.float64
TOL = 1e-4  # of the largest |logit|, float32

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smp(cls, os_, classes=3):
    return nontrivial_module(cls(encoder_name="mobilenet_v2", encoder_weights=None, classes=classes,
                           encoder_output_stride=os_))


def test_relu6_matches_torch():
    x = np.array([-1.0, 0.0, 0.5, 6.0, 7.0, 3.0])
    y = layers.relu6(x)
    xt = torch.from_numpy(x).requires_grad_()
    yt = ref_layers.relu6(xt)
    dy = np.arange(1.0, 7.0)
    yt.backward(torch.from_numpy(dy))
    assert np.array_equal(y, yt.detach().numpy()) and np.array_equal(y, [0, 0, 0.5, 6, 6, 3])
    assert np.array_equal(layers.relu6_backward(dy, y), xt.grad.numpy())
    assert np.array_equal(layers.relu6_backward(dy, x), xt.grad.numpy())


@pytest.mark.parametrize("os_", [8, 16, 32])
def test_spec_is_smps_encoder(os_):
    """parameter_shapes are the encoder's state_dict, in order; every 3x3 conv strides and dilates as smp's
    make_dilated left it; the features smp's decoder reads are low_level and out."""
    enc = smp.encoders.get_encoder("mobilenet_v2", weights=None, output_stride=os_) if os_ != 32 else \
        smp.encoders.get_encoder("mobilenet_v2", weights=None)
    spec = MobileNetV2(os_)
    params, buffers = smb.parameter_shapes(spec)
    state = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert list(params) == [k for k in state if k in params] and state == params | buffers
    for conv, (stride, dilation) in spec.conv_table().items():
        c = enc.get_submodule(conv)
        assert (c.stride[0], c.dilation[0], c.padding[0]) == (stride, dilation, dilation), conv
    assert [b.residual for b in spec.blocks] == [m.use_res_connect for m in list(enc.features)[1:18]]
    assert enc.out_channels[2] == spec.low_level_channels and enc.out_channels[-1] == spec.out_channels


def test_conv_macs_match_torchvision_published_cost():
    """torchvision's weight metadata (_ops, 224x224) counts multiply-accumulates, the 1280 x 1000 classifier
    included."""
    from torchvision.models import MobileNet_V2_Weights

    from minideeplab.bench.cost import conv_macs

    total = sum(conv_macs(MobileNetV2(32), 224).values()) + 1280 * 1000
    assert round(total / 1e9, 3) == MobileNet_V2_Weights.IMAGENET1K_V1.meta["_ops"]


@pytest.mark.parametrize("os_, training", [(16, False), (8, True)], ids=["os16-eval", "os8-train"])
def test_forward_backward_match_autograd(os_, training):
    """Float64, the full network on a small input: features and every gradient against autograd (~1e-10),
    running statistics updated as torch; ReLU6 clips somewhere (both of its ends are exercised)."""
    spec = MobileNetV2(os_)
    params, buffers = _random(spec, F64)
    feats, cache = backbone_matches_autograd(spec, params, buffers, 3 * _x((1, 3, 35, 29), dtype=F64), training)
    out_hw = (3, 2) if os_ == 16 else (5, 4)
    assert feats["low_level"].shape == (1, 24, 9, 8) and feats["out"].shape == (1, 1280, *out_hw)
    relu6s = [u.y for _, c in cache.steps for u in getattr(c, "units", [c]) if u.y is not None]
    assert any((y == 6).any() for y in relu6s) and any((y == 0).any() for y in relu6s)


def test_infer_is_eval_forward():
    spec = MobileNetV2(16)
    params, buffers = _random(spec, F32)
    x = 3 * _x((1, 3, 64, 48))
    feats, _ = sb.backbone_forward(spec, params, buffers, x, False)
    fast = sb.backbone_infer(spec, params, buffers, x)
    for k in feats:
        assert fast[k].dtype == F32 and rel(fast[k], feats[k]) < 1e-5, k


def test_from_smp():
    """smp's DeepLabV3Plus with the mobilenet_v2 encoder: eval logits within 1e-4 of the largest; the
    encoder's keys are ours below ``encoder.``. (Output stride 8: the spec test checks its dilations.)"""
    s = _smp(smp.DeepLabV3Plus, 16)
    model = interop.from_smp(s)
    assert model.config.backbone == MobileNetV2(16) and model.config.name == "v3plus"
    kmap = interop.key_map(model.config, "smp")
    assert kmap["backbone.features.7.conv.1.0.weight"] == "encoder.features.7.conv.1.0.weight"
    x = _x((1, 3, 64, 48))
    with torch.no_grad():
        expected = s(torch.from_numpy(x)).numpy()
    assert rel(model(x), expected) < TOL


def test_build_model_name():
    config = make_config("v3", backbone="mobilenet_v2", output_stride=8, num_classes=3)
    assert config.backbone == MobileNetV2(8) and config.describe() == "DeepLab v3 (mobilenet_v2, output stride 8)"
    shapes = scratch.deeplab.model_parameter_shapes(make_config("v3plus", backbone="mobilenet_v2"))[0]
    assert shapes["decoder.low_level.0.weight"] == (48, 24, 1, 1)
    assert shapes["aspp.convs.0.0.weight"] == (256, 1280, 1, 1)


MNV2 = MobileNetV2(16)
BAD = [
    ("MobileNetV2", lambda: MobileNetV2(4), "output_stride must be 8, 16 or 32, got 4"),
    ("make_config", lambda: make_config("v3", "mobilenet_v2", aux=True), "aux .* needs a ResNet or MobileNetV3 backbone"),
    ("make_config", lambda: make_config("v1", "mobilenet_v2"), r"v1 \(DeepLab-LargeFOV\) needs a VGG backbone"),
    ("make_config", lambda: make_config("v3plus", "mobilenet_v2", multi_grid=(1, 2, 4)),
     "multi_grid and dilation_convention apply to a ResNet, not to mobilenet_v2"),
    ("relu6_backward", lambda: layers.relu6_backward(np.zeros(3), np.zeros(4)),
     r"dy has shape \(3,\), expected \(4,\)"),
    ("relu6", lambda: layers.relu6([1.0]), "x must be"),
    ("backbone_forward", lambda: sb.backbone_forward(MNV2, *_random(MNV2, F32), _x((1, 3, 1, 1)), True),
     r"needs H and W >= 16"),
    ("backbone_forward", lambda: sb.backbone_forward(MNV2, *_random(MNV2, F32), _x((1, 3, 16, 16)), True),
     r"training \(batch norm\) needs N \* H_out \* W_out >= 2"),
]


@pytest.mark.parametrize("fn, call, message", [pytest.param(*b, id=f"{b[0]}-{i}") for i, b in enumerate(BAD)])
def test_bad_input(fn, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert str(info.value).startswith(fn + ":")
