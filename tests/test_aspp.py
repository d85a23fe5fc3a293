"""ASPP (v3) and ASPP-L (v2): names against torchvision's and smp's layouts, the scratch forward and
backward against the PyTorch twins (dropout masks replayed), bad input."""

import numpy as np
import pytest
import torch
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from minideeplab.reference import aspp as ref
from minideeplab.reference.backbone import params_to_torch
from minideeplab.scratch import aspp as scratch
from minideeplab.scratch.aspp import ASPP, ASPPL

from helpers import rel

F32, F64 = np.float32, np.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(spec, dtype, seed, prefix=""):
    """init_aspp, then BN affine parameters, running statistics and biases away from 1 / 0."""
    rng = np.random.default_rng(seed)
    params, buffers = scratch.init_aspp(spec, rng, F64, prefix)
    for k, v in params.items():
        if v.ndim == 1:
            bn = k.endswith(".weight") and k[:-7] + ".running_mean" in buffers
            params[k] = rng.uniform(0.5, 1.5, v.shape) if bn else 0.1 * rng.standard_normal(v.shape)
    for k, v in buffers.items():
        if k.endswith("running_mean"):
            buffers[k] = 0.1 * rng.standard_normal(v.shape)
        elif k.endswith("running_var"):
            buffers[k] = rng.uniform(0.5, 2, v.shape)
    return ({k: v.astype(dtype) for k, v in params.items()},
            {k: v.astype(dtype) if v.dtype.kind == "f" else v.copy() for k, v in buffers.items()})


def _twin(spec, params, buffers, training):
    m = params_to_torch(ref.build_aspp(spec), params, {k: v.copy() for k, v in buffers.items()})
    return m.train(training)


SPECS = {
    "plain": ASPP(24, 8, (1, 2, 3)),
    "separable": ASPP(24, 8, (1, 2, 3), separable=True),
    "no-pooling": ASPP(24, 8, (2, 4, 6), image_pooling=False),
    "separable-no-pooling-tf-dropout": ASPP(24, 8, (6,), image_pooling=False, separable=True, dropout=0.1),
}
X = np.random.default_rng(0).standard_normal((2, 24, 7, 9))


# --------------------------------------------------------------------------- names

def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("rates", [(12, 24, 36), (6,)])
def test_names_are_torchvision_aspp(rates):
    """Our names and shapes are torchvision's ASPP's state_dict (classifier.0 of deeplabv3_resnet50)."""
    tv = TorchvisionASPP(48, list(rates), 16).state_dict()
    params, buffers = scratch.parameter_shapes(ASPP(48, 16, rates))
    assert _shapes(tv) == params | buffers
    assert [k for k in tv if k in params] == list(params)
    assert list(ref.ASPPModule(ASPP(48, 16, rates)).state_dict()) == list(tv)
    assert params["convs.0.0.weight"] == (16, 48, 1, 1) and params["convs.1.0.weight"] == (16, 48, 3, 3)
    pool = 1 + len(rates)
    assert params[f"convs.{pool}.1.weight"] == (16, 48, 1, 1) and f"convs.{pool}.2.running_var" in buffers
    assert params["project.0.weight"] == (16, 16 * (pool + 1), 1, 1)


def test_separable_names_are_smp():
    """smp's ASPPSeparableConv = Sequential(SeparableConv2d(depthwise .0, pointwise .1, no bias), BN, ReLU)
    (segmentation_models_pytorch/decoders/deeplabv3/decoder.py): convs.{1..3}.0.0 / .0.1 / .1."""
    params, buffers = scratch.parameter_shapes(ASPP(48, 16, (12, 24, 36), separable=True), "decoder.aspp.0")
    for i in (1, 2, 3):
        p = f"decoder.aspp.0.convs.{i}"
        assert params[f"{p}.0.0.weight"] == (48, 1, 3, 3)   # depthwise, groups=48
        assert params[f"{p}.0.1.weight"] == (16, 48, 1, 1)  # pointwise
        assert params[f"{p}.1.weight"] == (16,) and f"{p}.1.running_mean" in buffers
        assert f"{p}.0.weight" not in params and f"{p}.0.0.bias" not in params and f"{p}.0.1.bias" not in params
    assert params["decoder.aspp.0.convs.0.0.weight"] == (16, 48, 1, 1)  # the 1x1 and pooling branches stay plain
    assert params["decoder.aspp.0.convs.4.1.weight"] == (16, 48, 1, 1)
    module = ref.ASPPModule(ASPP(48, 16, (12, 24, 36), separable=True))
    assert _shapes(module.state_dict()) == {k[len("decoder.aspp.0."):]: v for k, v in (params | buffers).items()}
    dw = module.convs[1][0][0]
    assert dw.groups == 48 and dw.dilation == (12, 12) and dw.padding == (12, 12)


def test_no_image_pooling():
    params, buffers = scratch.parameter_shapes(ASPP(48, 16, (6, 12, 18), image_pooling=False))
    assert not any(k.startswith("convs.4.") for k in params | buffers)
    assert params["project.0.weight"] == (16, 64, 1, 1)
    assert ASPP(48).num_branches == 5 and ASPP(48, image_pooling=False).num_branches == 4
    assert ASPP(48).pooling_index == 4 and ASPP(48, image_pooling=False).pooling_index is None


def test_aspp_l_resnet_names_and_count():
    """The released DeepLab-v2 ResNet-101 head (Caffe's fc1_voc12_c0..c3): per rate one 3x3 conv 2048 -> 21
    with bias, 4 x (2048 * 21 * 9 + 21) = 1,548,372 parameters; no dropout, no buffers."""
    spec = ASPPL(2048, 21, fc_channels=None)
    assert spec.dropout == 0 and not spec.has_fc and ASPPL(512, 21).has_fc
    params, buffers = scratch.parameter_shapes(spec, "classifier")
    assert buffers == {} and list(params) == [f"classifier.branches.{i}.{t}" for i in range(4) for t in ("weight", "bias")]
    assert params["classifier.branches.2.weight"] == (21, 2048, 3, 3) and params["classifier.branches.2.bias"] == (21,)
    assert sum(int(np.prod(v)) for v in params.values()) == 4 * (2048 * 21 * 9 + 21) == 1_548_372
    m = ref.ASPPLModule(spec)
    assert list(m.state_dict()) == [k[len("classifier."):] for k in params]
    assert sum(p.numel() for p in m.parameters()) == 1_548_372
    assert [(b.dilation[0], b.padding[0], b.bias is not None) for b in m.branches] == [(r, r, True) for r in (6, 12, 18, 24)]
    assert not any(isinstance(x, ref.Dropout) for x in m.modules())


def test_aspp_l_names():
    params, buffers = scratch.parameter_shapes(ASPPL(512, 21), "classifier")
    assert buffers == {} and len(params) == 4 * 6
    assert params["classifier.branches.3.fc6.weight"] == (1024, 512, 3, 3)
    assert params["classifier.branches.0.fc7.weight"] == (1024, 1024, 1, 1)
    assert params["classifier.branches.2.fc8.weight"] == (21, 1024, 1, 1) and params["classifier.branches.2.fc8.bias"] == (21,)
    assert list(ref.ASPPLModule(ASPPL(512, 21)).state_dict()) == [k[len("classifier."):] for k in params]
    rates = [ref.ASPPLModule(ASPPL(8, 3)).branches[i].fc6.dilation[0] for i in range(4)]
    assert rates == [6, 12, 18, 24]
    assert sum(int(np.prod(v)) for v in params.values()) == 23_162_964  # the VGG-16 ASPP-L: 23.2 M


def test_init():
    params, buffers = scratch.init_aspp(ASPP(64, 32, separable=True), np.random.default_rng(0), F64, "aspp")
    assert abs(params["aspp.convs.1.0.0.weight"].std() / np.sqrt(2 / 9) - 1) < 0.2  # depthwise: fan-out k*k
    assert abs(params["aspp.convs.1.0.1.weight"].std() / np.sqrt(2 / 32) - 1) < 0.1
    assert (params["aspp.project.1.weight"] == 1).all() and (params["aspp.project.1.bias"] == 0).all()
    assert (buffers["aspp.convs.4.2.running_var"] == 1).all() and buffers["aspp.convs.4.2.num_batches_tracked"] == 0
    p32, _ = scratch.init_aspp(ASPPL(8, 3), np.random.default_rng(0))
    assert all(v.dtype == F32 for v in p32.values()) and (p32["branches.0.fc6.bias"] == 0).all()
    p, _ = scratch.init_aspp(ASPPL(64, 21, fc_channels=None), np.random.default_rng(0), F64)
    assert (p["branches.3.bias"] == 0).all() and abs(p["branches.3.weight"].std() / np.sqrt(2 / (21 * 9)) - 1) < 0.05


# --------------------------------------------------------------------------- forward and backward

@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("variant", list(SPECS))
def test_aspp_matches_torch(variant, training):
    """float64 forward, backward (dx and every gradient) and the running statistics against the twin,
    dropout masks replayed; float32 eval forward within 1e-5 of max |y|."""
    spec = SPECS[variant]
    params, buffers = _random(spec, F64, seed=1, prefix="")
    m = _twin(spec, params, buffers, training)
    y, cache = scratch.aspp_forward(spec, params, buffers, X, training, np.random.default_rng(2))
    assert set(cache.masks) == ({"project.3"} if training else set())
    ref.set_dropout_masks(m, cache.masks)
    xt = torch.from_numpy(X.copy()).requires_grad_(True)
    yt = m(xt)
    assert y.shape == (2, 8, 7, 9) and y.dtype == F64
    assert rel(y, yt.detach().numpy()) < 1e-12
    state = m.state_dict()
    for k, v in buffers.items():  # training moved the running statistics as torch's
        assert rel(v, state[k].numpy()) < 1e-12, k
    assert all(v == int(training) for k, v in buffers.items() if k.endswith("num_batches_tracked"))
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx, grads = scratch.aspp_backward(dy, cache)
    yt.backward(torch.from_numpy(dy))
    assert rel(dx, xt.grad.numpy()) < 1e-10
    tgrads = {k: p.grad.numpy() for k, p in m.named_parameters()}
    assert list(grads) == list(params) == list(tgrads)
    for k, g in grads.items():
        assert g.dtype == F64 and rel(g, tgrads[k]) < 1e-10, k
    assert all(np.abs(g).max() > 0 for g in grads.values())
    if not training:
        p32 = {k: v.astype(F32) for k, v in params.items()}
        b32 = {k: v.astype(F32) if v.dtype.kind == "f" else v for k, v in buffers.items()}
        y32, _ = scratch.aspp_forward(spec, p32, b32, X.astype(F32), False)
        with torch.no_grad():
            t32 = _twin(spec, p32, b32, False)(torch.from_numpy(X.astype(F32))).numpy()
        assert y32.dtype == F32 and rel(y32, t32) <= 1e-5
        # the lean eval path (no caches) against the same twins
        assert rel(scratch.aspp_infer(spec, params, buffers, X), yt.detach().numpy()) < 1e-12
        yi32 = scratch.aspp_infer(spec, p32, b32, X.astype(F32))
        assert yi32.dtype == F32 and rel(yi32, t32) <= 1e-5


def test_prefix_and_a_model_sized_dict():
    """Names below a prefix: the function reads its own keys from a bigger dict (the model's) and
    leaves the rest alone; its grads come back under the prefix."""
    spec = SPECS["plain"]
    params, buffers = _random(spec, F64, seed=4, prefix="classifier.0")
    other = {"backbone.conv1.weight": np.zeros((4, 3, 7, 7)), "classifier.1.weight": np.zeros((8, 8, 3, 3))}
    y, cache = scratch.aspp_forward(spec, params | other, buffers, X, False, prefix="classifier.0")
    plain_p = {k[len("classifier.0."):]: v for k, v in params.items()}
    plain_b = {k[len("classifier.0."):]: v for k, v in buffers.items()}
    y2, _ = scratch.aspp_forward(spec, plain_p, plain_b, X, False)
    assert np.array_equal(y, y2)
    _, grads = scratch.aspp_backward(np.ones_like(y), cache)
    assert list(grads) == list(params)


L_SPECS = {"vgg-form": ASPPL(12, 5, (1, 2, 3, 4), fc_channels=10),
           "resnet-form": ASPPL(12, 5, (1, 2, 3, 4), fc_channels=None),
           "resnet-form-wide-rates": ASPPL(12, 5, (2, 5, 8), fc_channels=None)}  # rate 8 > H, W: taps on padding


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("form", list(L_SPECS))
def test_aspp_l_matches_torch(form, training):
    """float64 forward (and the infer path), dx and every gradient against the twin, masks replayed."""
    spec = L_SPECS[form]
    params, buffers = _random(spec, F64, seed=5, prefix="classifier")
    assert buffers == {}
    m = ref.ASPPLModule(spec)
    params_to_torch(m, {k[len("classifier."):]: v for k, v in params.items()}, {}).train(training)
    x = X[:, :12]
    y, cache = scratch.aspp_l_forward(spec, params, {}, x, training, np.random.default_rng(6), "classifier")
    assert len(cache.masks) == (2 * len(spec.atrous_rates) if training and spec.has_fc else 0)
    ref.set_dropout_masks(m, {k[len("classifier."):]: v for k, v in cache.masks.items()})
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = m(xt)
    assert y.shape == (2, 5, 7, 9) and rel(y, yt.detach().numpy()) < 1e-12
    if not training:
        assert rel(scratch.aspp_l_infer(spec, params, {}, x, "classifier"), yt.detach().numpy()) < 1e-12
    dy = np.random.default_rng(7).standard_normal(y.shape)
    dx, grads = scratch.aspp_l_backward(dy, cache)
    yt.backward(torch.from_numpy(dy))
    assert rel(dx, xt.grad.numpy()) < 1e-10
    assert list(grads) == list(params)
    for k, p in m.named_parameters():
        assert rel(grads[f"classifier.{k}"], p.grad.numpy()) < 1e-10, k
        assert np.abs(p.grad.numpy()).max() > 0, k


def test_aspp_l_resnet_form_is_linear():
    """The ResNet form is one linear map: the sum of the branches' convs, no ReLU and no dropout, so a
    training forward (no rng needed) equals eval, and the logits of a sum of inputs are the sum of the
    logits less the extra biases."""
    spec = L_SPECS["resnet-form"]
    params, _ = _random(spec, F64, seed=9)
    x1, x2 = X[:, :12], X[:, 12:]
    y_train, cache = scratch.aspp_l_forward(spec, params, {}, x1, True)
    assert cache.masks == {} and np.array_equal(y_train, scratch.aspp_l_forward(spec, params, {}, x1, False)[0])
    f = lambda x: scratch.aspp_l_infer(spec, params, {}, x)  # noqa: E731
    bias = sum(params[f"branches.{i}.bias"] for i in range(4))[None, :, None, None]
    assert rel(f(x1 + x2), f(x1) + f(x2) - bias) < 1e-12


def test_aspp_l_as_one_conv():
    """The ResNet form's four branches, summed, are one conv with a sparse 49x49 kernel (33 non-zero taps):
    torch's conv2d with that kernel gives the twin's output."""
    spec = ASPPL(12, 5, fc_channels=None)
    params, _ = _random(spec, F64, seed=10, prefix="classifier")
    w, b = scratch.aspp_l_as_one_conv(spec, params, "classifier")
    assert w.shape == (5, 12, 49, 49) and b.shape == (5,)
    taps = np.argwhere(np.abs(w).sum(axis=(0, 1)) > 0)
    assert len(taps) == 33 and {tuple(t) for t in taps} == {(24 + i * r, 24 + j * r) for r in (6, 12, 18, 24)
                                                             for i in (-1, 0, 1) for j in (-1, 0, 1)}
    assert np.array_equal(w[:, :, 24, 24], sum(params[f"classifier.branches.{i}.weight"][:, :, 1, 1] for i in range(4)))
    m = ref.ASPPLModule(spec)
    params_to_torch(m, {k[len("classifier."):]: v for k, v in params.items()}, {}).eval()
    x = torch.from_numpy(np.random.default_rng(11).standard_normal((2, 12, 30, 27)))
    with torch.no_grad():
        expected = m(x).numpy()
        got = torch.nn.functional.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), padding=24).numpy()
    assert rel(got, expected) < 1e-12
    with pytest.raises(ValueError, match=r"aspp_l_as_one_conv: spec has fc_channels=4: fc6-fc7-fc8 with ReLUs is not one conv"):
        scratch.aspp_l_as_one_conv(_LSPEC, _LP)
    with pytest.raises(ValueError, match=r"aspp_l_as_one_conv: params do not match ASPPL\(.*below 'classifier': missing"):
        scratch.aspp_l_as_one_conv(spec, {k: v for k, v in params.items() if "branches.3" not in k}, "classifier")


def test_dropout_only_in_training():
    spec = SPECS["plain"]
    params, buffers = _random(spec, F64, seed=8)
    y1, c1 = scratch.aspp_forward(spec, params, buffers, X, False)           # eval: no rng needed
    y2, _ = scratch.aspp_forward(spec, params, buffers, X, False, np.random.default_rng(0))
    assert np.array_equal(y1, y2) and c1.mask is None
    t1, c = scratch.aspp_forward(spec, params, buffers, X, True, np.random.default_rng(1))
    t2, _ = scratch.aspp_forward(spec, params, buffers, X, True, np.random.default_rng(2))
    t1b, _ = scratch.aspp_forward(spec, params, buffers, X, True, np.random.default_rng(1))
    assert not np.array_equal(t1, t2) and np.array_equal(t1, t1b)  # seeded masks
    kept = c.mask != 0
    assert 0.3 < kept.mean() < 0.7 and np.allclose(c.mask[kept], 2.0)  # p = 0.5: kept values scaled by 2
    no_drop = ASPP(24, 8, (1, 2, 3), dropout=0.0)
    y, c = scratch.aspp_forward(no_drop, params, buffers, X, True)  # p = 0: no rng needed, no mask
    assert c.mask is None and c.masks == {}


def test_ask_for_the_image_pooling_batch():
    """Training BN on the pooled (N, C, 1, 1) branch needs N >= 2 (torch raises too); without the
    branch one image is enough."""
    spec = SPECS["plain"]
    params, buffers = _random(spec, F64, seed=9)
    with pytest.raises(ValueError, match=r"aspp_forward: x has shape \(1, 24, 7, 9\): training with image_pooling needs N >= 2"):
        scratch.aspp_forward(spec, params, buffers, X[:1], True, np.random.default_rng(0))
    with pytest.raises(ValueError):
        _twin(spec, params, buffers, True)(torch.from_numpy(X[:1]))
    spec = SPECS["no-pooling"]
    params, buffers = _random(spec, F64, seed=9)
    y, _ = scratch.aspp_forward(spec, params, buffers, X[:1], True, np.random.default_rng(0))
    assert y.shape == (1, 8, 7, 9)


# --------------------------------------------------------------------------- bad input

_SPEC = SPECS["plain"]
_P, _B = scratch.init_aspp(_SPEC, np.random.default_rng(0), F64)
_Y, _CACHE = scratch.aspp_forward(_SPEC, _P, _B, X, False)
_LSPEC = ASPPL(24, 3, fc_channels=4)
_LP, _ = scratch.init_aspp(_LSPEC, np.random.default_rng(0), F64)


def _fwd(**bad):
    a = dict(spec=_SPEC, params=_P, buffers=_B, x=X, training=False) | bad
    return scratch.aspp_forward(**a)


BAD = [
    ("ASPP", lambda: ASPP(0), "in_channels must be an int >= 1, got 0"),
    ("ASPP", lambda: ASPP(8, atrous_rates=()), r"atrous_rates must be a non-empty tuple of ints >= 1, got \(\)"),
    ("ASPP", lambda: ASPP(8, atrous_rates=(6, 0)), r"got \(6, 0\)"),
    ("ASPP", lambda: ASPP(8, dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
    ("ASPP", lambda: ASPP(8, separable=1), "separable must be True or False, got 1"),
    ("ASPPL", lambda: ASPPL(8, 0), "num_classes must be an int >= 1, got 0"),
    ("ASPPL", lambda: ASPPL(8, 3, fc_channels=0), r"fc_channels must be None \(one 3x3 conv per rate, the ResNet-101 "
                                                  r"form\) or an int >= 1 \(fc6-fc7-fc8, the VGG-16 form\), got 0"),
    ("ASPPL", lambda: ASPPL(8, 3, fc_channels=None, dropout=0.5),
     r"dropout=0.5 needs fc layers \(drop6, drop7\): with fc_channels=None each branch is one 3x3 conv"),
    ("init_aspp", lambda: scratch.init_aspp(_SPEC, 0), "rng must be a numpy.random.Generator"),
    ("init_aspp", lambda: scratch.init_aspp("aspp", np.random.default_rng(0)), "spec must be an ASPP or ASPPL, got str"),
    ("aspp_forward", lambda: _fwd(spec=_LSPEC), "spec must be an ASPP, got ASPPL"),
    ("aspp_forward", lambda: _fwd(x=X[:, :16]), r"x has shape \(2, 16, 7, 9\), expected 24 channels \(spec.in_channels\)"),
    ("aspp_forward", lambda: _fwd(x=X[0]), r"x must be 4-D \(N, C, H, W\), got shape \(24, 7, 9\)"),
    ("aspp_forward", lambda: _fwd(x=X.astype(F32)), r"params\['convs.0.0.weight'\] has dtype float64 but x has dtype float32"),
    ("aspp_forward", lambda: _fwd(training=True), "rng must be a numpy.random.Generator .* when training with dropout 0.5, got NoneType"),
    ("aspp_forward", lambda: _fwd(training="yes"), "training must be True or False, got 'yes'"),
    ("aspp_forward", lambda: _fwd(params={k: v for k, v in _P.items() if k != "project.0.weight"}),
     "params do not match ASPP.*: missing 'project.0.weight'"),
    ("aspp_forward", lambda: _fwd(params=_P | {"convs.5.0.weight": _P["convs.0.0.weight"]}),
     "params do not match ASPP.*: unexpected 'convs.5.0.weight'"),
    ("aspp_forward", lambda: _fwd(spec=SPECS["separable"]),
     r"params do not match ASPP\(.*separable=True.*: missing 'convs.1.0.0.weight'"),
    ("aspp_forward", lambda: _fwd(prefix="classifier.0"), r"params do not match ASPP\(.*\) below 'classifier.0': missing"),
    ("aspp_forward", lambda: _fwd(buffers={k: v for k, v in _B.items() if "num_batches" not in k}),
     "buffers do not match .*: missing 'convs.0.1.num_batches_tracked'"),
    ("aspp_backward", lambda: scratch.aspp_backward(_Y[:, :4], _CACHE),
     r"dy has shape \(2, 4, 7, 9\), expected \(2, 8, 7, 9\) \(the forward's output shape\)"),
    ("aspp_backward", lambda: scratch.aspp_backward(_Y.astype(F32), _CACHE), "dy has dtype float32 but the forward's x had float64"),
    ("aspp_backward", lambda: scratch.aspp_backward(_Y, None), "cache must be the ASPPCache returned by aspp_forward, got NoneType"),
    ("aspp_l_forward", lambda: scratch.aspp_l_forward(_LSPEC, _LP, {}, X, True),
     "rng must be a numpy.random.Generator .* got NoneType"),
    ("aspp_l_forward", lambda: scratch.aspp_l_forward(_SPEC, _P, _B, X, False), "spec must be an ASPPL, got ASPP"),
    ("aspp_l_backward", lambda: scratch.aspp_l_backward(_Y, _CACHE), "cache must be the ASPPLCache returned by aspp_l_forward, got ASPPCache"),
    ("aspp_infer", lambda: scratch.aspp_infer(_SPEC, _P, _B, X[:, :16]), r"x has shape \(2, 16, 7, 9\), expected 24 channels"),
    ("aspp_infer", lambda: scratch.aspp_infer(_LSPEC, _LP, {}, X), "spec must be an ASPP, got ASPPL"),
    ("aspp_l_infer", lambda: scratch.aspp_l_infer(_LSPEC, _LP, {}, X.astype(F32)), r"has dtype float64 but x has dtype float32"),
    ("aspp_l_forward", lambda: scratch.aspp_l_forward(ASPPL(24, 3, fc_channels=None), _LP, {}, X, False),
     r"params do not match ASPPL\(.*fc_channels=None.*: missing 'branches.0.weight'"),
]


@pytest.mark.parametrize("fn, call, message", [pytest.param(*b, id=f"{b[0]}-{i}") for i, b in enumerate(BAD)])
def test_bad_input(fn, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert str(info.value).startswith(fn + ":")


def test_set_dropout_masks_names_the_unknown():
    with pytest.raises(ValueError, match=r"set_dropout_masks: no Dropout named 'project.4' in the module; it has \['project.3'\]"):
        ref.set_dropout_masks(ref.ASPPModule(_SPEC), {"project.4": np.ones(1)})
