"""MobileNetV3-Large (torchvision's dilated layout), DeepLabV3 on it and LR-ASPP: the spec against torchvision's
modules, the scratch forward, infer and backward against the PyTorch twins (float64, a narrow width), the
activations, loading torchvision's ``deeplabv3_mobilenet_v3_large`` / ``lraspp_mobilenet_v3_large``, and bad
input."""

import numpy as np
import pytest
import torch
from torchvision.models import mobilenet_v3_large
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large
from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

from minideeplab import interop, reference, scratch
from minideeplab.bench.cost import conv_macs, model_mult_adds
from minideeplab.reference import layers as ref_layers
from minideeplab.reference.backbone import build_backbone, params_from_torch, params_to_torch
from minideeplab.reference.deeplab import set_dropout_masks, to_torch
from minideeplab.scratch import backbone as sb
from minideeplab.scratch import layers
from minideeplab.specs.deeplab import is_score_layer, make_config
from minideeplab.specs.mobilenet import MobileNetV3, make_divisible

from helpers import nontrivial_model, nontrivial_module, rel

F32, F64 = np.float32, np.float64
NARROW = MobileNetV3(width_mult=0.25)  # every width 8..240: the structure, quick in float64
TOL = 1e-4  # of the largest |logit|, float32 (interop)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _close_grads(grads, module, tol=1e-10):
    """Every scratch gradient within ``tol`` of autograd's, relative to that gradient's largest entry, with a
    floor of 1e-3 x the largest entry of any gradient: in training, a project unit's BN bias feeds only
    training batch norms downstream, so its true gradient is 0 and both sides hold rounding (~1e-13)."""
    tgrads = {k: p.grad.numpy() for k, p in module.named_parameters() if p.grad is not None}
    assert set(tgrads) <= set(grads)
    floor = 1e-3 * max(np.abs(t).max() for t in tgrads.values())
    for k, t in tgrads.items():
        assert np.abs(grads[k] - t).max() <= tol * max(np.abs(t).max(), floor), k


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize("width, os_", [(1.0, 16), (0.25, 16), (1.0, 32)])
def test_spec_is_torchvisions_features(width, os_):
    """Names, order, shapes, strides and dilations of torchvision's ``mobilenet_v3_large(dilated=...).features``;
    the twin's state_dict and the scratch parameter shapes are the same."""
    spec = MobileNetV3(width, os_)
    with torch.device("meta"):  # shapes only
        tv = mobilenet_v3_large(weights=None, width_mult=width, dilated=os_ == 16).features
        twin = build_backbone(spec)
    expected = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in twin.state_dict().items()} == expected
    assert list(twin.state_dict()) == list(expected)
    params, buffers = sb.parameter_shapes(spec)
    assert params | buffers == expected
    convs = {n: (m.stride[0], m.dilation[0]) for n, m in tv.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs == spec.conv_table()
    if width == 1.0:
        assert (spec.low_level_channels, spec.low_channels, spec.out_channels) == (24, 40, 960)
        assert [b.residual for b in spec.blocks] == [tv[i].use_res_connect for i in range(1, 16)]


def test_make_divisible():
    assert [make_divisible(v) for v in (3, 4, 12, 16 * 0.25, 20, 60 * 0.75, 28)] == [8, 8, 16, 8, 24, 48, 32]
    assert make_divisible(10) == 16  # 8 would lose 20 %: one more step


def test_shapes_and_strides():
    x = np.zeros((1, 3, 67, 53), F32)
    params, buffers = sb.init_backbone(NARROW, np.random.default_rng(0))
    feats = sb.backbone_infer(NARROW, params, buffers, x)
    assert {k: v.shape for k, v in feats.items()} == {"low_level": (1, 8, 17, 14), "low": (1, 16, 9, 7),
                                                      "out": (1, 240, 5, 4)}
    os32 = MobileNetV3(0.25, 32)
    feats = sb.backbone_infer(os32, *sb.init_backbone(os32, np.random.default_rng(0)), x)
    assert feats["out"].shape == (1, 240, 3, 2)


def test_mult_adds_are_torchvisions_published_costs():
    """torchvision's weight metadata (_ops) counts multiply-accumulates: the classifier network at 224 (its two
    linear layers added here), the segmentation models at 520 (DeepLabV3's aux head, which torchvision runs in
    eval too, added here: a 3x3 conv 40 -> 10 and a 1x1 10 -> 21 on the 65 x 65 stride-8 map)."""
    from torchvision.models import MobileNet_V3_Large_Weights
    from torchvision.models.segmentation import DeepLabV3_MobileNet_V3_Large_Weights, LRASPP_MobileNet_V3_Large_Weights

    classifier = sum(conv_macs(MobileNetV3(output_stride=32), 224).values()) + 960 * 1280 + 1280 * 1000
    assert round(classifier / 1e9, 3) == MobileNet_V3_Large_Weights.IMAGENET1K_V1.meta["_ops"]
    lraspp = sum(model_mult_adds("lraspp", size=(520, 520)).values())
    assert round(lraspp / 1e9, 3) == LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1.meta["_ops"]
    v3 = sum(model_mult_adds("v3", "mobilenet_v3_large", size=(520, 520)).values()) + 65 * 65 * (10 * 40 * 9 + 21 * 10)
    assert round(v3 / 1e9, 3) == DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1.meta["_ops"]


# --------------------------------------------------------------------------- activations


def test_activations_match_torch():
    """Forward and backward, float64, at the kinks (-3, 3), between and beyond; sigmoid without overflow."""
    x = np.concatenate([[-3.0, 3.0, 0.0, -800.0, 800.0], np.random.default_rng(0).uniform(-5, 5, 200)])
    dy = np.random.default_rng(1).standard_normal(x.shape)
    cases = [(layers.hardswish, layers.hardswish_backward, torch.nn.functional.hardswish, False),
             (layers.hardsigmoid, layers.hardsigmoid_backward, ref_layers.hardsigmoid, False),
             (layers.sigmoid, layers.sigmoid_backward, ref_layers.sigmoid, True)]
    for forward, backward, twin, takes_output in cases:
        xt = torch.from_numpy(x).requires_grad_()
        yt = twin(xt)
        (yt * torch.from_numpy(dy)).sum().backward()
        y = forward(x)
        assert np.all(np.isfinite(y)) and y.dtype == F64
        assert rel(y, yt.detach().numpy()) < 1e-15, forward.__name__
        assert rel(backward(dy, y if takes_output else x), xt.grad.numpy()) < 1e-15, forward.__name__
        assert forward(x.astype(F32)).dtype == F32


# --------------------------------------------------------------------------- backbone against its twin


@pytest.mark.parametrize("training", [False, True])
def test_backbone_matches_twin(training):
    """float64: features of forward (and infer) against the twin; dx and every parameter's gradient against
    autograd to 1e-10; training updates the running statistics as torch (momentum 0.01)."""
    twin = nontrivial_module(build_backbone(NARROW).double())
    params, buffers = params_from_torch(twin)
    x = np.random.default_rng(0).standard_normal((2, 3, 37, 29))
    xt = torch.from_numpy(x).requires_grad_()
    out = twin.train(training)(xt)
    feats, cache = sb.backbone_forward(NARROW, params, buffers, x, training)
    for k in ("low_level", "low", "out"):
        assert rel(feats[k], out[k].detach().numpy()) < 1e-12, k
    if not training:
        inferred = sb.backbone_infer(NARROW, params, buffers, x)
        assert all(rel(inferred[k], feats[k]) < 1e-12 for k in feats)
    else:
        state = twin.state_dict()
        assert all(np.allclose(buffers[k], state[k].numpy(), rtol=0, atol=1e-14) for k in buffers)
        assert buffers["1.block.0.1.num_batches_tracked"] == 1
    rng = np.random.default_rng(1)
    d = {k: rng.standard_normal(v.shape) for k, v in feats.items()}
    sum((out[k] * torch.from_numpy(d[k])).sum() for k in d).backward()
    dx, grads = sb.backbone_backward(NARROW, d, cache)
    assert list(grads) == list(sb.parameter_shapes(NARROW)[0])
    assert rel(dx, xt.grad.numpy()) < 1e-10
    _close_grads(grads, twin)


def test_params_round_trip():
    params, buffers = sb.init_backbone(NARROW, np.random.default_rng(0), F64)
    twin = params_to_torch(build_backbone(NARROW), params, buffers)
    back_p, back_b = params_from_torch(twin)
    assert all(np.array_equal(back_p[k], v) for k, v in params.items()) and set(back_b) == set(buffers)


# --------------------------------------------------------------------------- models against the twin


@pytest.mark.parametrize("name, options", [("lraspp", {"inter_channels": 16}),
                                           ("v3", {"aspp_channels": 16, "aux": True})])
@pytest.mark.parametrize("training", [False, True])
def test_model_matches_twin(name, options, training):
    """LR-ASPP and DeepLabV3 (with aux) on the narrow MobileNetV3, float64: logits (and aux logits), dx and
    every gradient against the twin and autograd."""
    m = nontrivial_model(name, backbone=NARROW, num_classes=3, **options).train(training)
    x = np.random.default_rng(0).standard_normal((2, 3, 37, 29))
    twin = to_torch(m)
    logits, cache = m.forward(x)
    set_dropout_masks(twin, cache.masks)
    xt = torch.from_numpy(x).requires_grad_()
    out = twin(xt)
    assert rel(logits, out["out"].detach().numpy()) < 1e-12
    rng = np.random.default_rng(1)
    d = rng.standard_normal(logits.shape)
    loss = (out["out"] * torch.from_numpy(d)).sum()
    daux = None
    if training and name == "v3":
        assert rel(cache.aux, out["aux"].detach().numpy()) < 1e-12
        daux = rng.standard_normal(cache.aux.shape)
        loss = loss + (out["aux"] * torch.from_numpy(daux)).sum()
    loss.backward()
    dx, grads = scratch.deeplab.model_backward(d, cache, daux)
    assert rel(dx, xt.grad.numpy()) < 1e-10
    _close_grads(grads, twin)
    if not training:
        assert rel(m(x), logits) < 1e-12  # infer


def test_build_model_entry_points():
    """build_model("lraspp" / "v3", backbone="mobilenet_v3_large") in scratch and reference: torchvision's
    state_dict keys and shapes (v3: with aux; ASPP rates (12, 24, 36) at output stride 16)."""
    for name, ctor, kw in [("lraspp", lraspp_mobilenet_v3_large, {}),
                           ("v3", deeplabv3_mobilenet_v3_large, {"aux": True})]:
        with torch.device("meta"):
            tv = ctor(weights=None, weights_backbone=None, num_classes=4, **({"aux_loss": True} if kw else {}))
            twin = reference.build_model(name, backbone="mobilenet_v3_large", num_classes=4, **kw)
        expected = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in twin.state_dict().items()} == expected
        config = make_config(name, "mobilenet_v3_large", num_classes=4, **kw)
        params, buffers = scratch.deeplab.model_parameter_shapes(config)
        assert params | buffers == expected
        assert config.output_stride == 16 and (name == "lraspp" or config.atrous_rates == (12, 24, 36))
    m = scratch.build_model("lraspp", num_classes=2, rng=np.random.default_rng(0))
    assert m.config.backbone == MobileNetV3() and m.config.inter_channels == 128
    convs = {k[:-len(".weight")]: v.shape for k, v in m.params.items() if v.ndim == 4}
    scores = {k for k in convs if is_score_layer(k)}
    assert scores == {k for k, shape in convs.items() if shape[0] == 2} == {"classifier.low_classifier",
                                                                              "classifier.high_classifier"}
    assert all(m.params[f"{k}.weight"].std() < 0.02 for k in scores)  # class-score convs: N(0, 0.01)


# --------------------------------------------------------------------------- torchvision's models


def _tv(ctor, seed, **kw):
    torch.manual_seed(seed)
    return nontrivial_module(ctor(weights=None, weights_backbone=None, **kw), seed)


@pytest.mark.parametrize("kind", ["lraspp", "v3-aux", "lraspp-os32"])
def test_from_torchvision(kind):
    """Eval logits within 1e-4 of the largest |logit| at an odd size; the reference twin loads the same
    weights and gives torchvision's logits (v3); the state_dict alone gives the same config."""
    if kind == "lraspp":
        tv = _tv(lraspp_mobilenet_v3_large, 1, num_classes=5)
    elif kind == "v3-aux":
        tv = _tv(deeplabv3_mobilenet_v3_large, 2, num_classes=5, aux_loss=True)
    else:  # LR-ASPP on the undilated backbone: output stride 32, read from the module's convs
        torch.manual_seed(3)
        tv = nontrivial_module(_lraspp_mobilenetv3(mobilenet_v3_large(weights=None), 5), 3)
    model = interop.from_torchvision(tv)
    c = model.config
    assert c.name == ("v3" if kind == "v3-aux" else "lraspp") and c.num_classes == 5 and not model.training
    assert c.backbone == MobileNetV3(1.0, 32 if kind == "lraspp-os32" else 16)
    assert c.aux == (kind == "v3-aux") and (kind != "v3-aux" or c.atrous_rates == (12, 24, 36))
    size = (35, 33) if kind == "lraspp-os32" else (67, 53)
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(F32)
    with torch.no_grad():
        expected = tv(torch.from_numpy(x))["out"].numpy()
        if kind == "v3-aux":  # the twin loads the same weights (params_to_torch) and computes the same
            twin = interop.to_reference(model).eval()
            assert rel(twin(torch.from_numpy(x))["out"].numpy(), expected) < 1e-6
    got = model(x)
    assert got.shape == (1, 5, *size) and got.dtype == F32
    assert rel(got, expected) < TOL
    if kind != "lraspp-os32":
        assert interop.from_torchvision(tv.state_dict()).config == c


def test_state_dict_that_does_not_fit():
    state = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).state_dict()
    del state["backbone.5.block.2.fc1.bias"]
    state["classifier.extra.weight"] = torch.zeros(1)
    state["backbone.7.block.1.0.weight"] = torch.zeros(240, 1, 5, 5)
    with pytest.raises(ValueError, match=r"from_torchvision: the state_dict does not fit DeepLab lraspp .*"
                                         r"1 missing: 'backbone\.5\.block\.2\.fc1\.bias'; 1 unexpected: "
                                         r"'classifier\.extra\.weight'; 1 mis-shaped: 'backbone\.7\.block\.1\.0"
                                         r"\.weight' \(240, 1, 5, 5\), expected \(240, 1, 3, 3\)"):
        interop.from_torchvision(state)


# --------------------------------------------------------------------------- bad input


BAD = [
    (lambda: MobileNetV3(width_mult=0), r"MobileNetV3: width_mult must be a number in \(0, 4\], got 0"),
    (lambda: MobileNetV3(width_mult=True), r"MobileNetV3: width_mult must be a number .*got True"),
    (lambda: MobileNetV3(output_stride=8), r"MobileNetV3: output_stride must be 16 .* or 32, got 8"),
    (lambda: make_config("lraspp", "resnet50"), r"make_config: lraspp \(LR-ASPP\) needs a MobileNetV3 backbone"),
    (lambda: make_config("v3plus", "mobilenet_v3_large"), r"make_config: v3plus needs a ResNet, .*backbone, got MobileNetV3"),
    (lambda: make_config("lraspp", atrous_rates=(1, 2)), r"atrous_rates=\(1, 2\): lraspp .* has no atrous"),
    (lambda: make_config("lraspp", dropout=0.3), r"dropout=0\.3: lraspp \(LR-ASPP\) has no dropout"),
    (lambda: make_config("v3", "mobilenet_v3_large", inter_channels=64),
     r"inter_channels=64 applies to lraspp only, not v3"),
    (lambda: make_config("lraspp", inter_channels=0), r"inter_channels must be an int >= 1, got 0"),
    (lambda: make_config("lraspp", output_stride=8), r"make_config: MobileNetV3: output_stride must be 16"),
    (lambda: make_config("lraspp", multi_grid=(1, 2, 4)), r"multi_grid and dilation_convention apply to a ResNet"),
    (lambda: layers.hardswish_backward(np.ones(3), np.ones(4)), r"hardswish_backward: dy has shape \(3,\)"),
    (lambda: layers.hardsigmoid(np.ones(3, np.int64)), r"hardsigmoid: x .*float"),
    (lambda: layers.sigmoid_backward(np.ones(3, F32), np.ones(3)), r"sigmoid_backward: dy has dtype float32"),
    (lambda: interop.from_torchvision({"backbone.16.0.weight": torch.zeros(1)}),
     r"from_torchvision: neither a DeepLabHead .* nor an LR-ASPP head"),
]


@pytest.mark.parametrize("call, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_backward_names_the_taps():
    params, buffers = sb.init_backbone(NARROW, np.random.default_rng(0), F64)
    _, cache = sb.backbone_forward(NARROW, params, buffers, np.zeros((1, 3, 16, 16)), False)
    with pytest.raises(ValueError, match=r"unexpected keys 'layer3', expected 'low_level' and/or 'out', or 'low'"):
        sb.backbone_backward(NARROW, {"layer3": None}, cache)
