"""Interop with real PyTorch models: torchvision's deeplabv3_resnet50/101 and smp's DeepLabV3Plus / DeepLabV3
(ResNet encoders) to the scratch DeepLab, eval outputs within 1e-4 of max |logit|; smp's input rule; the
decoder_layout="smp" option against its twin (forward, train and eval, and backward); state_dicts that do
not fit; round trips through the reference twin; bad input."""

import copy

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101, fcn_resnet50

from minideeplab import interop
from minideeplab import reference
from minideeplab import scratch as scratch_pkg
from minideeplab.reference import deeplab as ref
from minideeplab.scratch import deeplab as scratch
from minideeplab.scratch.backbone import ResNet

from helpers import nontrivial_model, nontrivial_module, rel

F32, F64 = np.float32, np.float64
TOL = 1e-4  # of the largest |logit|, float32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(shape, seed=0, dtype=F32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _same_weights(model, state, kmap):
    for ours, theirs in kmap.items():
        a = model.params.get(ours, model.buffers.get(ours))
        assert np.array_equal(a, state[theirs].numpy()), ours


# --------------------------------------------------------------------------- torchvision

TORCHVISION = [
    ("resnet50", deeplabv3_resnet50, 50, False, 21, (1, 3, 33, 41)),
    ("resnet50-aux", deeplabv3_resnet50, 50, True, 21, (1, 3, 33, 41)),
    ("resnet101", deeplabv3_resnet101, 101, False, 7, (1, 3, 65, 65)),
]


@pytest.mark.parametrize("fid, ctor, depth, aux, classes, shape", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_from_torchvision(fid, ctor, depth, aux, classes, shape):
    torch.manual_seed(len(fid))
    tv = nontrivial_module(ctor(weights=None, weights_backbone=None, num_classes=classes, aux_loss=aux))
    model = interop.from_torchvision(tv)
    c = model.config
    assert c.name == "v3" and c.backbone == ResNet(depth, 8, "torchvision") and c.num_classes == classes
    assert c.aux == aux and not c.align_corners and c.atrous_rates == (12, 24, 36) and c.decoder_layout == "paper"
    assert not model.training and model.dtype == F32
    _same_weights(model, tv.state_dict(), interop.key_map(c, "torchvision"))
    assert any(k.startswith("aux_classifier.") for k in model.params) == aux
    x = _x(shape, seed=depth)
    with torch.no_grad():
        expected = tv(torch.from_numpy(x))["out"].numpy()
    got = model(x)
    assert got.shape == (1, classes) + shape[2:] and got.dtype == F32
    assert rel(got, expected) < TOL
    if aux:  # the state_dict alone gives the same model (output stride 8 and rates are torchvision's)
        again = interop.from_torchvision(tv.state_dict())
        assert again.config == c and not again.training
        assert all(np.array_equal(again.params[k], v) for k, v in model.params.items())
        twin = interop.to_reference(model)  # the twin runs torchvision's ops: the same logits
        with torch.no_grad():
            assert rel(twin(torch.from_numpy(x))["out"].numpy(), expected) < 1e-6


def test_from_torchvision_keeps_mode_and_dtype():
    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3).double().train()
    model = interop.from_torchvision(tv)
    assert model.training and model.dtype == F64 and model.config.num_classes == 3


# --------------------------------------------------------------------------- smp

SMP = [
    ("v3plus-resnet18-os16", smp.DeepLabV3Plus, "resnet18", 16, {}, (1, 3, 32, 48)),
    ("v3plus-resnet34-os8", smp.DeepLabV3Plus, "resnet34", 8, {}, (1, 3, 32, 40)),
    ("v3plus-resnet50-os16", smp.DeepLabV3Plus, "resnet50", 16, {}, (1, 3, 64, 48)),
    ("v3plus-resnet18-plain-aspp", smp.DeepLabV3Plus, "resnet18", 8,
     dict(decoder_aspp_separable=False, decoder_atrous_rates=(6, 12, 18), decoder_channels=64), (2, 3, 24, 32)),
    ("v3-resnet18-os8", smp.DeepLabV3, "resnet18", 8, {}, (1, 3, 32, 48)),
    ("v3-resnet34-os16", smp.DeepLabV3, "resnet34", 16, {}, (1, 3, 48, 32)),
    ("v3-resnet50-os8", smp.DeepLabV3, "resnet50", 8, {}, (1, 3, 32, 32)),
    ("v3-resnet18-separable", smp.DeepLabV3, "resnet18", 16,
     dict(decoder_aspp_separable=True, decoder_atrous_rates=(2, 4, 6), decoder_aspp_dropout=0.1), (1, 3, 32, 32)),
]


def _smp(cls, encoder, os_, classes=5, seed=0, **kw):
    torch.manual_seed(seed)
    return nontrivial_module(cls(encoder_name=encoder, encoder_weights=None, encoder_output_stride=os_, classes=classes,
                           **kw), seed)


@pytest.mark.parametrize("fid, cls, encoder, os_, kw, shape", SMP, ids=[s[0] for s in SMP])
def test_from_smp(fid, cls, encoder, os_, kw, shape):
    sm = _smp(cls, encoder, os_, seed=len(fid), **kw)
    model = interop.from_smp(sm)
    c = model.config
    plus = cls is smp.DeepLabV3Plus
    assert c.name == ("v3plus" if plus else "v3") and c.decoder_layout == "smp" and c.align_corners
    assert c.backbone == ResNet(int(encoder[6:]), os_, "smp") and c.num_classes == 5
    assert c.atrous_rates == kw.get("decoder_atrous_rates", (12, 24, 36))  # whatever the output stride
    assert c.aspp_separable == kw.get("decoder_aspp_separable", plus)
    assert c.dropout == kw.get("decoder_aspp_dropout", 0.5) and c.aspp_channels == kw.get("decoder_channels", 256)
    assert c.decoder_separable == plus and not model.training
    state = sm.state_dict()
    kmap = interop.key_map(c, "smp")
    assert sorted(kmap.values()) == sorted(state)
    _same_weights(model, state, kmap)
    x = _x(shape, seed=len(fid))
    with torch.no_grad():
        expected = sm(torch.from_numpy(x)).numpy()
    got = model(x)
    assert got.shape == (shape[0], 5) + shape[2:]
    assert rel(got, expected) < TOL
    twin = interop.to_reference(model)  # the twin resizes to a size, smp by a scale factor: the same here
    with torch.no_grad():
        assert rel(twin(torch.from_numpy(x))["out"].numpy(), expected) < 1e-6


def test_smp_input_rule():
    """smp refuses sizes that are not multiples of the output stride; so does the converted model (even
    the k * OS + 1 sizes that v3+ with align_corners=True takes in the paper layout)."""
    sm = _smp(smp.DeepLabV3Plus, "resnet18", 16)
    model = interop.from_smp(sm)
    with pytest.raises(RuntimeError, match="divisible by 16"):
        sm(torch.zeros(1, 3, 40, 48))
    for hw, near in (((40, 48), r"H in 32, 48, W in 48"), ((33, 33), r"H in 32, 48, W in 32, 48")):
        with pytest.raises(ValueError, match=r"DeepLab.forward: x has shape \(1, 3, %d, %d\), but DeepLab v3plus "
                                             r"\(resnet18, output stride 16\) with decoder_layout='smp' needs H and W "
                                             r"divisible by 16 \(smp's rule.*nearest: %s" % (hw + (near,))):
            model(np.zeros((1, 3) + hw, F32))
    with pytest.raises(ValueError, match=r"DeepLabModule.forward: .* needs H and W divisible by 16"):
        interop.to_reference(model)(torch.zeros(1, 3, 40, 48))
    v3 = interop.from_smp(_smp(smp.DeepLabV3, "resnet18", 8))
    with pytest.raises(ValueError, match=r"needs H and W divisible by 8"):
        v3(np.zeros((1, 3, 33, 32), F32))
    assert v3(np.zeros((1, 3, 32, 24), F32)).shape == (1, 5, 32, 24)


# --------------------------------------------------------------------------- the decoder_layout option

def _model(name, dtype=F64, seed=0, **kw):
    return nontrivial_model(name, dtype, seed, **kw).eval()


SMP_LAYOUT = [
    ("v3plus-separable", "v3plus", dict(aspp_separable=True, decoder_separable=True, align_corners=True)),
    ("v3plus-plain-os8", "v3plus", dict(output_stride=8, image_pooling=False, dropout=0.1)),
    ("v3", "v3", dict(align_corners=True)),
]


def test_decoder_layout_config():
    c = scratch.make_config("v3plus", "resnet18", decoder_layout="smp", decoder_separable=True)
    params, _ = scratch.model_parameter_shapes(c)
    assert [k for k in params if k.startswith("decoder.")] == [
        "decoder.aspp_conv.0.0.weight", "decoder.aspp_conv.0.1.weight", "decoder.aspp_conv.1.weight",
        "decoder.aspp_conv.1.bias", "decoder.low_level.0.weight", "decoder.low_level.1.weight",
        "decoder.low_level.1.bias", "decoder.fuse.0.0.0.weight", "decoder.fuse.0.0.1.weight",
        "decoder.fuse.0.1.weight", "decoder.fuse.0.1.bias"]
    assert params["decoder.fuse.0.0.1.weight"] == (256, 304, 1, 1)
    assert scratch.make_config("v3plus").decoder_layout == "paper"
    v3 = scratch.make_config("v3", "resnet18", decoder_layout="smp")  # v3: the same parameters
    assert scratch.model_parameter_shapes(v3) == scratch.model_parameter_shapes(scratch.make_config("v3", "resnet18"))
    with pytest.raises(ValueError, match="make_config: decoder_layout='smp' applies to v3 and "
                                         "v3plus only, not v2"):
        scratch.make_config("v2", decoder_layout="smp")
    with pytest.raises(ValueError, match="make_config: decoder_layout must be one of 'paper', "
                                         "'smp', got 'tf'"):
        scratch.make_config("v3", decoder_layout="tf")


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("fid, name, options", SMP_LAYOUT, ids=[s[0] for s in SMP_LAYOUT])
def test_decoder_layout_smp_matches_twin(fid, name, options, training):
    """The scratch forward (dropout masks replayed, running statistics moved alike) and backward against the
    twin and autograd, float64."""
    model = _model(name, F64, seed=len(fid), backbone="mini", num_classes=4, decoder_layout="smp", **options)
    model.train(training)
    x = _x((2, 3, 32, 32), seed=len(fid), dtype=F64)
    t = interop.to_reference(model)
    logits, cache = model.forward(x)
    ref.set_dropout_masks(t, cache.masks)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out = t(xt)["out"]
    assert rel(logits, out.detach().numpy()) < 1e-11
    if training:
        state = t.state_dict()
        assert all(rel(v, state[k].numpy()) < 1e-12 for k, v in model.buffers.items())
    dlogits = np.random.default_rng(8).standard_normal(logits.shape)
    dx, grads = scratch.model_backward(dlogits, cache)
    (out * torch.from_numpy(dlogits)).sum().backward()
    assert rel(dx, xt.grad.numpy()) < 1e-10
    tgrads = {k: p.grad for k, p in t.named_parameters()}
    assert list(grads) == list(model.params) == list(tgrads)
    for k, g in grads.items():
        assert rel(g, tgrads[k].numpy()) < 1e-10, k


def test_v3_smp_layout_is_paper_layout_on_its_sizes():
    paper = _model("v3", F64, seed=1, backbone="mini", num_classes=3, align_corners=True)
    smp_ = scratch.DeepLab(scratch.make_config("v3", "mini", num_classes=3, align_corners=True, decoder_layout="smp"),
                           paper.params, paper.buffers)
    x = _x((1, 3, 32, 48), dtype=F64)
    assert np.array_equal(paper(x), smp_(x))


# --------------------------------------------------------------------------- state_dicts that do not fit

@pytest.fixture(scope="module")
def tv50():
    torch.manual_seed(0)
    return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True).eval()


def test_state_dict_mismatch(tv50):
    config = interop.torchvision_config(tv50)
    state = tv50.state_dict()
    keys = list(state)
    assert interop.load_state_dict(config, state, "torchvision").config == config

    truncated = {k: state[k] for k in keys[:-8]}
    with pytest.raises(ValueError, match=r"^load_state_dict: the state_dict does not fit DeepLab v3 \(resnet50, output "
                                         r"stride 8\) \(torchvision names, %d keys expected\): 8 missing: "
                                         r"'aux_classifier.0.weight', 'aux_classifier.1.weight', .*, "
                                         r"\.\.\. \(3 more\)$" % len(keys)) as info:
        interop.load_state_dict(config, truncated, "torchvision")
    assert "unexpected" not in str(info.value) and "mis-shaped" not in str(info.value)

    extra = dict(state, **{"decoder.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"\): 1 unexpected: 'decoder.extra.weight'$"):
        interop.load_state_dict(config, extra, "torchvision")

    wrong = dict(state, **{"classifier.4.weight": torch.zeros(21, 128, 1, 1)})
    with pytest.raises(ValueError, match=r"\): 1 mis-shaped: 'classifier.4.weight' \(21, 128, 1, 1\), "
                                         r"expected \(21, 256, 1, 1\)$"):
        interop.load_state_dict(config, wrong, "torchvision")

    everything = {k: v for k, v in extra.items() if k != "backbone.conv1.weight"}
    everything["classifier.4.bias"] = torch.zeros(5)
    for i in range(7):
        everything[f"junk.{i}"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 missing: 'backbone.conv1.weight'; 8 unexpected: 'decoder.extra.weight', "
                                         r"'junk.0', 'junk.1', 'junk.2', 'junk.3', \.\.\. \(3 more\); 1 mis-shaped: "
                                         r"'classifier.4.bias' \(5,\), expected \(21,\)$"):
        interop.load_state_dict(config, everything, "torchvision")
    # the same through from_torchvision (a state_dict), named after it
    with pytest.raises(ValueError, match=r"^from_torchvision: the state_dict does not fit .* 1 unexpected"):
        interop.from_torchvision(extra)
    with pytest.raises(ValueError, match=r"^from_torchvision: .* 2 missing: 'aux_classifier.4.weight', "
                                         r"'aux_classifier.4.bias'$"):
        interop.from_torchvision({k: v for k, v in state.items() if not k.startswith("aux_classifier.4")})
    # smp's names
    sm = _smp(smp.DeepLabV3Plus, "resnet18", 16)
    c = interop.smp_config(sm)
    s = sm.state_dict()
    s["decoder.block2.0.1.weight"] = torch.zeros(256, 300, 1, 1)
    del s["segmentation_head.0.bias"]
    with pytest.raises(ValueError, match=r"\(smp names, .*\): 1 missing: 'segmentation_head.0.bias'; 1 mis-shaped: "
                                         r"'decoder.block2.0.1.weight' \(256, 300, 1, 1\), "
                                         r"expected \(256, 304, 1, 1\)"):
        interop.load_state_dict(c, s, "smp")


# --------------------------------------------------------------------------- round trips

ROUND_TRIP = [
    ("v3plus-smp", "v3plus", dict(backbone="mini", decoder_layout="smp", decoder_separable=True, aspp_separable=True,
                                  align_corners=True, dilation_convention="smp")),
    ("v3plus", "v3plus", dict(backbone="mini", output_stride=8)),
    ("v3-aux", "v3", dict(backbone="mini", aux=True)),
    ("v2", "v2", dict(backbone="mini")),                           # ResNet form: one 3x3 conv per rate
    ("v2-fc", "v2", dict(backbone="mini", fc_channels=16)),        # fc6-fc7-fc8
]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("fid, name, options", ROUND_TRIP, ids=[r[0] for r in ROUND_TRIP])
def test_round_trip(fid, name, options, dtype):
    """scratch -> reference -> scratch: the same config, mode, dtype and weights (copies), the same logits."""
    model = _model(name, dtype, seed=len(fid), num_classes=3, **options)
    for training in (False, True):
        model.train(training)
        t = interop.to_reference(model)
        assert isinstance(t, ref.DeepLabModule) and t.training == training
        back = interop.from_reference(t, rng=np.random.default_rng(0))
        assert back.config == model.config and back.training == training and back.dtype == dtype
        assert list(back.params) == list(model.params) and list(back.buffers) == list(model.buffers)
        for d, e in ((back.params, model.params), (back.buffers, model.buffers)):
            assert all(np.array_equal(d[k], v) and d[k].dtype == v.dtype for k, v in e.items())
    back.params["classifier.0.project.0.weight" if name == "v3" else next(iter(back.params))][...] = 0
    assert all(v.any() for k, v in model.params.items() if v.ndim == 4)  # copies
    model.eval()
    x = _x((1, 3, 32, 32), dtype=dtype)
    assert np.array_equal(model(x), interop.from_reference(interop.to_reference(model))(x))


def test_round_trip_from_smp():
    sm = _smp(smp.DeepLabV3Plus, "resnet34", 8)
    model = interop.from_smp(sm)
    back = interop.from_reference(interop.to_reference(model))
    assert back.config == model.config
    assert all(np.array_equal(back.params[k], v) for k, v in model.params.items())
    assert all(np.array_equal(back.buffers[k], v) for k, v in model.buffers.items())


# --------------------------------------------------------------------------- exports and bad input

def test_exports():
    assert scratch_pkg.build_model is scratch.build_model and scratch_pkg.DeepLab is scratch.DeepLab
    assert reference.build_model is ref.build_model and reference.DeepLabModule is ref.DeepLabModule
    assert scratch_pkg.deeplab is scratch and reference.deeplab is ref
    assert scratch_pkg.dense_crf is not None  # the existing exports stay


_TINY_SMP = _smp(smp.DeepLabV3Plus, "resnet18", 16)
_TINY_SMP_V3 = smp.DeepLabV3("resnet18", encoder_weights=None)

BAD = [
    ("from_torchvision", lambda: interop.from_torchvision(_TINY_SMP),
     "module must be torchvision's DeepLabV3 .*got segmentation_models_pytorch.*DeepLabV3Plus"),
    ("from_torchvision", lambda: interop.from_torchvision(_TINY_SMP_V3),
     r"module must be torchvision's DeepLabV3 .*got segmentation_models_pytorch\..*\.DeepLabV3$"),
    ("from_torchvision", lambda: interop.from_torchvision(fcn_resnet50(weights=None, weights_backbone=None)),
     r"module must be torchvision's DeepLabV3 .*or LRASPP .*got torchvision.*\.FCN$"),
    ("from_torchvision", lambda: interop.from_torchvision(3), "module must be a torch nn.Module or a state_dict"),
    ("from_torchvision", lambda: interop.from_torchvision({"classifier.4.weight": torch.zeros(1)}),
     "no ResNet backbone .* and no MobileNetV3 one"),
    ("from_smp", lambda: interop.from_smp(deeplabv3_resnet50(weights=None, weights_backbone=None)),
     "module must be smp's DeepLabV3Plus or DeepLabV3, got torchvision.*DeepLabV3"),
    ("from_smp", lambda: interop.from_smp(torch.nn.Conv2d(1, 1, 1)),
     "module must be smp's DeepLabV3Plus or DeepLabV3, got torch.nn.modules.conv.Conv2d"),
    ("from_smp", lambda: interop.from_smp(smp.DeepLabV3Plus("tu-resnet18", encoder_weights=None)),
     "only smp's ResNet encoders .* got TimmUniversalEncoder 'resnet18'"),
    ("from_smp", lambda: interop.from_smp(smp.DeepLabV3Plus("resnet18", encoder_weights=None, activation="sigmoid")),
     "activation must be None .* got Sigmoid"),
    ("from_smp", lambda: interop.from_smp(smp.DeepLabV3Plus("resnet18", encoder_weights=None,
                                                            aux_params={"classes": 2})),
     r"classification head \(aux_params\) is not supported"),
    ("from_smp", lambda: interop.from_smp(smp.DeepLabV3Plus("resnet18", encoder_weights=None, upsampling=2)),
     r"must upsample x4 with align_corners=True"),
    ("from_smp", lambda: interop.from_smp(smp.DeepLabV3Plus("resnet18", encoder_weights=None, in_channels=1)),
     "in_channels must be 3"),
    ("from_smp", lambda: interop.from_smp(smp.DeepLabV3Plus("resnet18", encoder_weights=None, encoder_depth=4)),
     "encoder_depth must be 5"),
    ("key_map", lambda: interop.key_map(scratch.make_config("v3"), "timm"),
     "source must be one of 'torchvision', 'smp', 'minideeplab', got 'timm'"),
    ("key_map", lambda: interop.key_map(scratch.make_config("v3plus"), "torchvision"),
     "torchvision's names are those of DeepLab v3 with decoder_layout 'paper'"),
    ("key_map", lambda: interop.key_map(scratch.make_config("v3plus"), "smp"),
     "smp's names are those of DeepLab v3 or v3plus with decoder_layout 'smp', got v3plus with decoder_layout 'paper'"),
    ("load_state_dict", lambda: interop.load_state_dict(interop.smp_config(_TINY_SMP), [], "smp"),
     "state_dict must be a mapping"),
    ("load_state_dict", lambda: interop.load_state_dict(interop.smp_config(_TINY_SMP),
                                                        copy.deepcopy(_TINY_SMP).half().state_dict(), "smp"),
     "weights must be all float32 or all float64, got float16"),
    ("to_reference", lambda: interop.to_reference(_TINY_SMP), "model must be a scratch DeepLab, got DeepLabV3Plus"),
    ("from_reference", lambda: interop.from_reference(_TINY_SMP), "module must be a minideeplab DeepLabModule"),
]


@pytest.mark.parametrize("fn, call, message", [pytest.param(*b, id=f"{b[0]}-{i}") for i, b in enumerate(BAD)])
def test_bad_input(fn, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert str(info.value).startswith(fn + ":")
