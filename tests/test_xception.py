"""Aligned Xception (DeepLab v3+'s backbone): the spec's stride -> rate plan against TF's order and timm's
modules, the scratch forward and backward against the PyTorch twin (float64 gradients vs autograd on a reduced
config), timm's and smp's weights loading, and bad input."""

from functools import lru_cache

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import timm
import torch

from minideeplab import interop
from minideeplab import reference, scratch
from minideeplab.scratch import backbone as sb
from minideeplab.scratch import xception as sx
from minideeplab.specs.deeplab import make_config
from minideeplab.specs.xception import Xception

from helpers import backbone_matches_autograd, grads_match, nontrivial_model, nontrivial_module, nontrivial_params, rel

F32, F64 = np.float32, np.float64
TOL = 1e-4  # of the largest |value|, float32
NARROW = (4, 6, 8, 10, 12, 14, 16, 18)  # widths of the reduced configs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(spec, dtype, seed=0):
    """init_backbone, then BN affine parameters and running statistics away from 1 / 0."""
    rng = np.random.default_rng(seed)
    params, buffers = sb.init_backbone(spec, rng, F64)
    nontrivial_params(params, buffers, rng)
    return ({k: v.astype(dtype) for k, v in params.items()},
            {k: v.astype(dtype) if v.dtype.kind == "f" else v.copy() for k, v in buffers.items()})


def _x(shape, seed=0, dtype=F32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@lru_cache(maxsize=None)
def _timm(name, output_stride):
    return nontrivial_module(timm.create_model(name, pretrained=False, output_stride=output_stride))


# --------------------------------------------------------------------------- the spec


def _plan(spec):
    return [(b.stride, b.dilation, b.skip, b.start_with_relu) for b in spec.blocks]


def test_xception65_plan_follows_tf():
    """Strides become rates in TF's order (the facts file): OS 16: exit block 1 loses its stride at rate 1,
    the last block at rate 2; OS 8: entry block 3 loses its stride, the middle flow and exit block 1 at
    rate 2, the last block at rate 4. Shortcut convs where the shape changes, no skip and ReLU after the
    BNs in the last block."""
    entry, middle = [("conv", True)] * 3, [("sum", True)] * 16
    skips = entry + middle + [("conv", True), ("none", False)]
    rates16 = [(2, 1)] * 3 + [(1, 1)] * 16 + [(1, 1), (1, 2)]
    rates8 = [(2, 1), (2, 1), (1, 1)] + [(1, 2)] * 16 + [(1, 2), (1, 4)]
    rates32 = [(2, 1)] * 3 + [(1, 1)] * 16 + [(2, 1), (1, 1)]
    for os_, rates in ((16, rates16), (8, rates8), (32, rates32)):
        spec = Xception(65, os_)
        assert _plan(spec) == [r + s for r, s in zip(rates, skips)], os_
        assert spec.low_level_block == 1 and spec.low_level_channels == 256 and spec.out_channels == 2048
    assert [b.out_channels for b in Xception(65).blocks[-2:]] == [(728, 1024, 1024), (1536, 1536, 2048)]
    assert len(Xception(41).blocks) == 13 and len(Xception(65, middle_blocks=2).blocks) == 7
    x71 = Xception(71, 16)
    assert [i for i, b in enumerate(x71.blocks) if b.skip == "conv"] == [0, 1, 2, 3, 4, 21]
    assert x71.low_level_block == 2 and [b.stride for b in x71.blocks[:5]] == [2, 1, 2, 1, 2]


@pytest.mark.parametrize("name, os_", [("xception41", 32), ("xception65", 16), ("xception71", 8)])
def test_spec_is_timms_module(name, os_):
    """parameter_shapes are timm's state_dict (less head.fc), in its order; every conv's stride and dilation
    are the module's; the low-level tap is timm's stride-4 feature."""
    m = _timm(name, os_)
    spec = Xception(int(name[-2:]), os_)
    params, buffers = sx.parameter_shapes(spec)
    state = {k: tuple(v.shape) for k, v in m.state_dict().items() if not k.startswith("head.")}
    assert list(params) == [k for k in state if k in params] and set(params) | set(buffers) == set(state)
    assert all(state[k] == s for k, s in (params | buffers).items())
    for conv, (stride, dilation) in spec.conv_table().items():
        c = m.get_submodule(conv)
        assert (c.stride[0], c.dilation[0], c.padding[0]) == (stride, dilation, dilation * (c.kernel_size[0] // 2))
    tap = next(f for f in m.feature_info if f["reduction"] == 4)
    assert tap["module"] == f"blocks.{spec.low_level_block}.stack.act3" and tap["num_chs"] == spec.low_level_channels


def test_conv_macs_are_timms():
    """bench.cost counts the twin's convs: conv by conv what timm's xception41 (meta device) runs, in the
    conv table's order; exit block 1's depthwise conv without its stride costs the 20x20 map's MACs."""
    from minideeplab.bench.cost import conv_counts, conv_macs

    macs = conv_macs(Xception(41, 16), 320)
    with torch.device("meta"):
        module = timm.create_model("xception41", pretrained=False, output_stride=16).eval()
        counts = conv_counts(module, torch.zeros(1, 3, 320, 320))
    assert list(macs) == list(Xception(41, 16).conv_table())
    assert macs == {k: m for k, (m, _) in counts.items() if k != "head.fc"}
    assert macs["blocks.11.stack.conv3.conv_dw"] == 20 * 20 * 1024 * 9


# --------------------------------------------------------------------------- scratch against the twin


SMALL = [Xception(65, 16, middle_blocks=1, widths=NARROW, low_level_tap="smp"),
         Xception(71, 8, middle_blocks=1, widths=NARROW)]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("spec", SMALL, ids=["x65-os16-smp-tap", "x71-os8-tf-tap"])
def test_forward_backward_match_autograd(spec, training):
    """Float64: features and every gradient (input, parameters) against the twin's autograd, to ~1e-10;
    training updates the running statistics as torch. smp's tap is a ReLU's output, TF's is not."""
    params, buffers = _random(spec, F64)
    feats, _ = backbone_matches_autograd(spec, params, buffers, _x((2, 3, 35, 29), dtype=F64), training)
    assert feats["low_level"].shape == (2, 10, 9, 8) and feats["out"].shape == (2, 18, *(
        (3, 2) if spec.output_stride == 16 else (5, 4)))
    assert (feats["low_level"] < 0).any() == (spec.low_level_tap == "tf")
    if training:
        assert buffers["blocks.0.stack.conv1.bn_dw.num_batches_tracked"] == 1


def test_backward_one_feature_only():
    """Leaving out the tap's gradient: the same as a zero one (the shortcut's gradient still reaches the
    block's input through the split pair)."""
    spec = SMALL[0]
    params, buffers = _random(spec, F64)
    feats, cache = sb.backbone_forward(spec, params, buffers, _x((1, 3, 32, 32), dtype=F64), False)
    dout = _x(feats["out"].shape, 3, F64)
    dx1, g1 = sb.backbone_backward(spec, {"out": dout}, cache)
    dx2, g2 = sb.backbone_backward(spec, {"out": dout, "low_level": np.zeros_like(feats["low_level"])}, cache)
    assert np.array_equal(dx1, dx2) and all(np.array_equal(g1[k], g2[k]) for k in g1)


@pytest.mark.parametrize("spec", [SMALL[0], Xception(41, 32, middle_blocks=0, widths=NARROW)],
                         ids=["x65-smp-tap", "x41-os32-tf-tap"])
def test_infer_is_eval_forward(spec):
    params, buffers = _random(spec, F32)
    x = _x((1, 3, 64, 48))
    feats, _ = sb.backbone_forward(spec, params, buffers, x, False)
    fast = sb.backbone_infer(spec, params, buffers, x)
    for k in feats:
        assert fast[k].dtype == F32 and rel(fast[k], feats[k]) < 1e-5, k


def test_v3plus_model_matches_twin_and_gradients():
    """build_model("v3plus", backbone=Xception spec) on both sides: logits equal, and the whole model's
    float64 gradients against autograd."""
    spec = SMALL[0]
    m = nontrivial_model("v3plus", backbone=spec, aspp_channels=8, low_level_channels=4, decoder_channels=8,
                         dropout=0.0).train()
    module = reference.deeplab.to_torch(m)
    x = _x((2, 3, 32, 32), dtype=F64)
    logits, cache = m.forward(x)
    xt = torch.from_numpy(x).requires_grad_()
    lt = module(xt)["out"]
    assert rel(logits, lt.detach().numpy()) < 1e-10
    d = _x(logits.shape, 5, F64)
    (lt * torch.from_numpy(d)).sum().backward()
    grads_match(m.backward(d, cache), module, 1e-10)


def test_build_model_names():
    """The names resolve on both sides; the full Xception-65 v3+ has timm's backbone and the right widths."""
    config = make_config("v3plus", backbone="xception65", output_stride=16)
    assert config.backbone == Xception(65, 16) and config.describe() == "DeepLab v3plus (xception65, output stride 16)"
    shapes = scratch.deeplab.model_parameter_shapes(config)[0]
    assert shapes["backbone.blocks.20.stack.conv3.conv_pw.weight"] == (2048, 1536, 1, 1)
    assert shapes["decoder.low_level.0.weight"] == (48, 256, 1, 1)
    m = scratch.build_model("v3plus", backbone=SMALL[0], rng=np.random.default_rng(0))
    assert m.config.describe() == "DeepLab v3plus (xception65 (reduced), output stride 16)"
    with torch.device("meta"):
        t = reference.build_model("v3", backbone="xception71", output_stride=8)
    assert t.config.backbone == Xception(71, 8) and t.config.atrous_rates == (12, 24, 36)
    params, buffers = scratch.deeplab.model_parameter_shapes(t.config)
    assert {k: tuple(v.shape) for k, v in t.state_dict().items()} == params | buffers


# --------------------------------------------------------------------------- real weights


def test_loads_timm_xception71_os8():
    """timm's xception71 at output stride 8 into the scratch backbone: features within 1e-4 of the largest
    (timm's stride-4 feature is the scratch low_level)."""
    m = _timm("xception71", 8)
    spec, params, buffers = interop.xception_from_timm(m)
    assert spec == Xception(71, 8, low_level_tap="smp")
    x = _x((1, 3, 33, 41))  # odd sizes: timm's symmetric padding is the scratch "same" one
    with torch.no_grad():
        low, out = m.forward_intermediates(torch.from_numpy(x), indices=[1, 4], intermediates_only=True)
    feats = sb.backbone_infer(spec, params, buffers, x)
    assert feats["low_level"].shape == (1, 256, 9, 11) and feats["out"].shape == (1, 2048, 5, 6)
    assert rel(feats["low_level"], low.numpy()) < TOL and rel(feats["out"], out.numpy()) < TOL


def test_loads_timm_state_dict():
    """A state_dict: depth from its blocks, output stride from the argument (16 by default)."""
    state = _timm("xception41", 32).state_dict()
    spec, params, _ = interop.xception_from_timm(state)
    assert spec == Xception(41, 16, low_level_tap="smp")
    assert interop.xception_from_timm(state, output_stride=8)[0] == Xception(41, 8, low_level_tap="smp")
    assert np.array_equal(params["blocks.5.stack.conv2.conv_dw.weight"],
                          state["blocks.5.stack.conv2.conv_dw.weight"].numpy())


def test_from_smp_tu_xception65():
    """smp's DeepLabV3Plus(tu-xception65): eval logits within 1e-4 of the largest, key for key."""
    s = nontrivial_module(smp.DeepLabV3Plus(encoder_name="tu-xception65", encoder_weights=None, classes=3))
    model = interop.from_smp(s)
    assert model.config.backbone == Xception(65, 16, low_level_tap="smp") and model.config.decoder_layout == "smp"
    kmap = interop.key_map(model.config, "smp")
    assert kmap["backbone.stem.0.conv.weight"] == "encoder.model.stem_0.conv.weight"
    key = "stack.conv3.bn_pw.running_var"
    assert kmap[f"backbone.blocks.12.{key}"] == f"encoder.model.blocks_12.{key}"
    x = _x((1, 3, 32, 48))
    with torch.no_grad():
        expected = s(torch.from_numpy(x)).numpy()
    assert rel(model(x), expected) < TOL


# --------------------------------------------------------------------------- bad input


def _bad_state():
    state = dict(_timm("xception41", 32).state_dict())
    del state["blocks.3.stack.conv1.conv_dw.weight"]
    state["blocks.4.extra.weight"] = torch.zeros(1)
    state["stem.0.conv.weight"] = torch.zeros(32, 3, 5, 5)
    return state


BAD = [
    ("Xception", lambda: Xception(50), "depth must be 41, 65 or 71, got 50"),
    ("Xception", lambda: Xception(65, 4), "output_stride must be 8, 16 or 32, got 4"),
    ("Xception", lambda: Xception(65, middle_blocks=-1), "middle_blocks must be None or an int >= 0, got -1"),
    ("Xception", lambda: Xception(65, widths=(1, 2)), r"widths must be 8 ints >= 1 .*got \(1, 2\)"),
    ("Xception", lambda: Xception(65, low_level_tap="relu"), "low_level_tap must be 'tf' .* or 'smp' .*got 'relu'"),
    ("make_config", lambda: make_config("v3", "xception65", aux=True), "aux .* needs a ResNet or MobileNetV3 backbone"),
    ("make_config", lambda: make_config("v2", "xception65"), "v2 needs a ResNet or VGG backbone"),
    ("make_config", lambda: make_config("v3plus", "xception65", multi_grid=(1, 2, 4)),
     "multi_grid and dilation_convention apply to a ResNet, not to xception65"),
    ("make_config", lambda: make_config("v3plus", "xception65", output_stride=4), "output_stride must be 8, 16 or 32"),
    ("make_config", lambda: make_config("v3plus", "xception99"), "backbone must be .* one of .*'xception71'"),
    ("xception_from_timm", lambda: interop.xception_from_timm(torch.nn.Conv2d(1, 1, 1)),
     "module must be timm's XceptionAligned .* got torch.nn.modules.conv.Conv2d"),
    ("xception_from_timm", lambda: interop.xception_from_timm({"blocks.0.x": torch.zeros(1)}),
     "the state_dict has 1 blocks"),
    ("xception_from_timm", lambda: interop.xception_from_timm(_timm("xception41", 32), output_stride=16),
     "output_stride=16, but the module's output stride is 32"),
    ("xception_from_timm", lambda: interop.xception_from_timm(_bad_state(), output_stride=12),
     "output_stride must be None, 8, 16 or 32, got 12"),
    ("xception_from_timm", lambda: interop.xception_from_timm(_bad_state()),
     r"1 missing: 'blocks.3.stack.conv1.conv_dw.weight'; 1 unexpected: 'blocks.4.extra.weight'; 1 mis-shaped: "
     r"'stem.0.conv.weight' \(32, 3, 5, 5\), expected \(32, 3, 3, 3\)"),
    ("backbone_forward", lambda: sb.backbone_forward(SMALL[0], *_random(SMALL[0], F32), _x((1, 3, 8, 40)), False),
     r"x has shape \(1, 3, 8, 40\), but Xception.* needs H and W >= 16"),
    ("backbone_forward", lambda: sb.backbone_forward(SMALL[0], *_random(SMALL[0], F64), _x((1, 3, 32, 32)), False),
     "params.* has dtype float64 but x has dtype float32"),
    ("backbone_infer", lambda: sb.backbone_infer(SMALL[0], *_random(SMALL[1], F32), _x((1, 3, 32, 32))),
     "params do not match Xception"),
]


@pytest.mark.parametrize("fn, call, message", [pytest.param(*b, id=f"{b[0]}-{i}") for i, b in enumerate(BAD)])
def test_bad_input(fn, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert str(info.value).startswith(fn + ":")
