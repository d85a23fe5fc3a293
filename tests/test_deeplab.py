"""The DeepLab family: configs, names against torchvision's deeplabv3_resnet50, the scratch forward and
backward against the PyTorch twins (dropout masks replayed), bad input (one SGD step: test_training_step.py)."""

import numpy as np
import pytest
import torch
from torchvision.models.segmentation import deeplabv3_resnet50

from minideeplab.reference import deeplab as ref
from minideeplab.scratch import deeplab as scratch
from minideeplab.scratch import units
from minideeplab.scratch.aspp import ASPP, ASPPL
from minideeplab.scratch.backbone import VGG, ResNet, init_backbone

from helpers import cast_model, nontrivial_model, rel

F32, F64 = np.float32, np.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


NARROW_VGG = VGG((4, 6, 8, 8, 8), 16)
X33 = np.random.default_rng(1).standard_normal((2, 3, 33, 33))

# (id, name, options, input): every member of the family, mini/narrow backbones and resnet18/50
FAMILY = [
    ("v1-vgg", "v1", dict(backbone=NARROW_VGG), X33),
    ("v2-mini", "v2", dict(backbone="mini"), X33),                     # ResNet form: one 3x3 conv per rate
    ("v2-mini-fc", "v2", dict(backbone="mini", fc_channels=32), X33),  # fc6-fc7-fc8 on a ResNet (asked for)
    ("v2-vgg", "v2", dict(backbone=NARROW_VGG, fc_channels=12), X33),
    ("v3-mini-os16", "v3", dict(backbone="mini"), X33),
    ("v3-mini-os8-multigrid-aux", "v3", dict(backbone="mini", output_stride=8, multi_grid=(1, 2, 4), aux=True), X33),
    ("v3plus-mini", "v3plus", dict(backbone="mini"), X33),
    ("v3plus-mini-separable-smp", "v3plus", dict(backbone="mini", aspp_separable=True, decoder_separable=True,
                                                 align_corners=True, dilation_convention="smp", dropout=0.1),
     np.random.default_rng(2).standard_normal((2, 3, 32, 48))),
    ("v2-resnet18", "v2", dict(backbone="resnet18"), X33),
    ("v3-resnet18", "v3", dict(backbone="resnet18", output_stride=8, aux=True), X33),
    ("v3plus-resnet18-os8", "v3plus", dict(backbone="resnet18", output_stride=8, image_pooling=False), X33),
    ("v2-resnet50", "v2", dict(backbone="resnet50"), X33[:1]),
    ("v3plus-resnet50", "v3plus", dict(backbone="resnet50", aspp_separable=True), X33),
]
MINI = [f for f in FAMILY if "resnet" not in f[0]]


def _run_twin(model, x, training, rng_seed=3):
    """Scratch forward, then the twin with the same weights and the scratch dropout masks."""
    model.train(training)
    model.rng = np.random.default_rng(rng_seed)
    t = ref.to_torch(model)
    logits, cache = model.forward(x)
    ref.set_dropout_masks(t, cache.masks)
    return logits, cache, t


# --------------------------------------------------------------------------- configs

def test_config_defaults_and_rates():
    v3 = scratch.make_config("v3")
    assert v3.backbone == ResNet(50, 16) and v3.atrous_rates == (6, 12, 18) and v3.output_stride == 16
    assert scratch.make_config("v3", output_stride=8).atrous_rates == (12, 24, 36)
    assert scratch.make_config("v3plus", "resnet101", 32).atrous_rates == (3, 6, 9)
    assert scratch.make_config("v3", atrous_rates=(1, 2, 3, 4)).atrous_rates == (1, 2, 3, 4)  # given: kept
    v2 = scratch.make_config("v2")
    assert v2.backbone == ResNet(101, 8) and v2.atrous_rates == (6, 12, 18, 24)
    assert v2.fc_channels is None and v2.aspp == ASPPL(2048, 21, (6, 12, 18, 24), None)  # the released ResNet-101's
    assert scratch.make_config("v2", "vgg16").aspp == ASPPL(512, 21, (6, 12, 18, 24), 1024, 0.5)  # the VGG-16 ASPP-L
    assert scratch.make_config("v2", fc_channels=256, dropout=0.3).aspp == ASPPL(2048, 21, fc_channels=256, dropout=0.3)
    assert scratch.make_config("v2", "vgg16", fc_channels=None).aspp == ASPPL(512, 21, fc_channels=None)
    assert scratch.make_config("v2", dropout=0.0).aspp.dropout == 0
    assert v3.fc_channels == "auto" and v2 == scratch.DeepLabConfig("v2", ResNet(101, 8), fc_channels=None)
    v1 = scratch.make_config("v1")
    assert v1.backbone == VGG() and v1.atrous_rates == (12,) and v1.aspp is None and v1.dropout == 0.5
    assert scratch.make_config("v1", atrous_rates=(24,)).backbone.fc6_rate == 24
    mg = scratch.make_config("v3", "resnet101", 8, multi_grid=(1, 2, 4), dilation_convention="smp")
    assert mg.multi_grid == (1, 2, 4) and mg.backbone.dilation_convention == "smp"
    assert [b.dilation for b in mg.backbone.stages[3]] == [4, 8, 16]
    p = scratch.make_config("v3plus", aspp_separable=True, dropout=0.1, align_corners=True)
    assert p.aspp == ASPP(2048, 256, (6, 12, 18), True, True, 0.1) and p.align_corners
    assert p.describe() == "DeepLab v3plus (resnet50, output stride 16)"
    assert v3.aux_channels == (1024, 256)
    with pytest.raises(AttributeError):
        v3.num_classes = 3  # frozen


def test_torchvision_state_dict_keys():
    """The scratch v3 (resnet50, OS 8) params + buffers are deeplabv3_resnet50's state_dict, in order and
    shape, with and without the aux head; the twin's state_dict is the same list."""
    for aux in (False, True):
        tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux)
        config = scratch.make_config("v3", "resnet50", 8, 21, aux=aux)
        params, buffers = scratch.model_parameter_shapes(config)
        state = tv.state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == params | buffers
        assert [k for k, _ in tv.named_parameters()] == list(params)
        assert list(ref.DeepLabModule(config).state_dict()) == list(state)
        assert any(k.startswith("aux_classifier.") for k in params) == aux


def test_torchvision_output():
    """torchvision's deeplabv3_resnet50 (random weights, non-trivial BN statistics) loads strictly into the
    twin; eval outputs agree exactly (twin) and within 1e-4 of max |logit| (scratch). In training, with
    torchvision's dropouts swapped for ours fed the same masks, out and aux agree (float64)."""
    torch.manual_seed(0)
    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    with torch.no_grad():
        for mod in tv.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    tv.eval()
    twin = ref.build_model("v3", "resnet50", 8, 21, aux=True)
    twin.load_state_dict(tv.state_dict(), strict=True)
    twin.eval()
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((1, 3, 33, 33)).astype(F32))
    with torch.no_grad():
        expected = tv(x)["out"]
        got = twin(x)
    assert list(got) == ["out"] and torch.equal(got["out"], expected)
    model = ref.to_scratch(twin)
    assert model.config.aux and not model.training and model.dtype == F32
    logits = model(x.numpy())
    assert logits.shape == (1, 21, 33, 33) and logits.dtype == F32
    assert rel(logits, expected.numpy()) < 1e-4

    tv.double().train()
    twin.double().train()
    tv.classifier[0].project[3] = ref.Dropout(0.5)  # replayable dropouts, at torchvision's own names
    tv.aux_classifier[3] = ref.Dropout(0.1)
    twin.train()
    x2 = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 3, 17, 17)))
    masks = {"classifier.0.project.3": np.random.default_rng(6).random((2, 256, 3, 3)) > 0.5,
             "aux_classifier.3": np.random.default_rng(7).random((2, 256, 3, 3)) > 0.1}
    ref.set_dropout_masks(tv, masks)
    ref.set_dropout_masks(twin, masks)
    with torch.no_grad():
        a, b = tv(x2), twin(x2)
    assert list(b) == ["out", "aux"]
    assert rel(b["out"].numpy(), a["out"].numpy()) < 1e-12 and rel(b["aux"].numpy(), a["aux"].numpy()) < 1e-12


# --------------------------------------------------------------------------- forward against the twins

@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("fid, name, options, x", FAMILY, ids=[f[0] for f in FAMILY])
def test_forward_matches_torch(fid, name, options, x, training):
    """float64 (eval and train, dropout masks replayed, running statistics moved alike): tight.
    float32 eval: within 1e-5 of max |logit|."""
    model = nontrivial_model(name, F64, seed=len(fid), num_classes=5, **options)
    logits, cache, t = _run_twin(model, x, training)
    with torch.no_grad():
        out = t(torch.from_numpy(x))
    N, _, H, W = x.shape
    assert logits.shape == (N, 5, H, W) and logits.dtype == F64
    assert rel(logits, out["out"].numpy()) < 1e-11
    has_aux = model.config.aux and training
    assert (cache.aux is not None) == has_aux and ("aux" in out) == has_aux
    if has_aux:
        assert cache.aux.shape == logits.shape and rel(cache.aux, out["aux"].numpy()) < 1e-11
    dropouts = [n for n, m in t.named_modules() if isinstance(m, ref.Dropout) and m.p > 0]
    assert sorted(cache.masks) == (sorted(dropouts) if training else [])
    if training:
        state = t.state_dict()
        for k, v in model.buffers.items():
            assert rel(v, state[k].numpy()) < 1e-12, k
    else:
        lean = model(x)  # eval: model_infer, no caches
        assert lean.dtype == F64 and rel(lean, out["out"].numpy()) < 1e-11
        m32 = cast_model(model, F32)
        t32 = ref.to_torch(m32)
        with torch.no_grad():
            expected = t32(torch.from_numpy(x.astype(F32)))["out"].numpy()
        got = m32(x.astype(F32))
        assert got.dtype == F32 and rel(got, expected) <= 1e-5
        assert rel(m32.forward(x.astype(F32))[0], expected) <= 1e-5


# --------------------------------------------------------------------------- backward against autograd

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fid, name, options, x", MINI, ids=[f[0] for f in MINI])
def test_backward_matches_autograd(fid, name, options, x, training):
    """dx and every parameter's gradient against torch autograd, float64 (aux included for v3 aux)."""
    model = nontrivial_model(name, F64, seed=len(fid) + 1, num_classes=4, **options)
    logits, cache, t = _run_twin(model, x, training)
    rng = np.random.default_rng(8)
    dlogits = rng.standard_normal(logits.shape)
    daux = None if cache.aux is None else rng.standard_normal(cache.aux.shape)
    dx, grads = scratch.model_backward(dlogits, cache, daux)

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out = t(xt)
    loss = (out["out"] * torch.from_numpy(dlogits)).sum()
    if daux is not None:
        loss = loss + (out["aux"] * torch.from_numpy(daux)).sum()
    loss.backward()
    assert dx.shape == x.shape and rel(dx, xt.grad.numpy()) < 1e-10
    tgrads = {k: p.grad for k, p in t.named_parameters()}
    assert list(grads) == list(model.params) == list(tgrads)
    for k, g in grads.items():
        assert g.shape == model.params[k].shape and g.dtype == F64
        if tgrads[k] is None:  # the aux head in eval: not used, zero here
            assert k.startswith("aux_classifier.") and not training and not g.any(), k
        else:
            assert rel(g, tgrads[k].numpy()) < 1e-10, k
            assert np.abs(g).max() > 0, k
    assert model.backward(dlogits, cache, daux).keys() == grads.keys()


def test_aux_head_only_in_training():
    model = nontrivial_model("v3", F64, backbone="mini", aux=True, num_classes=3)
    y_eval, c_eval = model.eval().forward(X33)
    assert c_eval.aux is None and c_eval.masks == {}
    _, c_train = model.train().forward(X33)
    assert c_train.aux.shape == (2, 3, 33, 33)
    assert set(c_train.masks) == {"classifier.0.project.3", "aux_classifier.3"}
    g = model.backward(np.ones((2, 3, 33, 33)), c_train)  # no daux: the aux head gets zero gradients
    assert not g["aux_classifier.4.weight"].any() and g["classifier.4.weight"].any()
    g = model.backward(np.zeros((2, 3, 33, 33)), c_train, daux=np.ones((2, 3, 33, 33)))
    assert g["aux_classifier.4.weight"].any() and not g["classifier.4.weight"].any()
    assert g["backbone.layer3.0.conv1.weight"].any() and not g["backbone.layer4.0.conv1.weight"].any()


# --------------------------------------------------------------------------- the model object

def test_model_object():
    model = scratch.build_model("v3plus", "mini", num_classes=6, rng=np.random.default_rng(0))
    assert not model.training and model.dtype == F32
    assert "params" not in repr(model) and repr(model).startswith("DeepLab(config=DeepLabConfig(name='v3plus'")
    x = np.random.default_rng(1).standard_normal((2, 3, 40, 36)).astype(F32)
    y = model(x)
    assert y.shape == (2, 6, 40, 36) and y.dtype == F32
    before = {k: v.copy() for k, v in model.buffers.items()}
    assert np.array_equal(model(x), y)  # eval: deterministic, buffers untouched
    assert all(np.array_equal(before[k], v) for k, v in model.buffers.items())
    assert model.train() is model and model.training
    y1, cache = model.forward(x)
    assert not np.array_equal(y1, y)
    assert model.buffers["backbone.bn1.num_batches_tracked"] == 1 and model.buffers["aspp.project.1.num_batches_tracked"] == 1
    grads = model.backward(np.ones_like(y1), cache)
    assert list(grads) == list(model.params) and all(g.dtype == F32 for g in grads.values())
    assert model.eval() is model and not model.training


def test_eval_call_keeps_no_caches(monkeypatch):
    """In eval, model(x) runs model_infer: no model_forward, no caching batch norm or max pool; the
    same logits as forward's. In training, model(x) is forward's logits (batch statistics, dropout)."""
    from minideeplab.scratch import layers, resnet

    model = nontrivial_model("v3plus", F32, seed=5, backbone="mini", num_classes=3)
    x = X33.astype(F32)
    expected = model.forward(x)[0]
    with monkeypatch.context() as m:
        for mod, name in ((scratch, "model_forward"), (units, "batch_norm2d"), (resnet, "max_pool2d"),
                          (layers, "batch_norm2d")):
            m.setattr(mod, name, lambda *a, **k: pytest.fail("a caching forward ran in eval"))
        got = model(x)
    assert got.shape == expected.shape and rel(got, expected) <= 1e-5
    seen = []
    monkeypatch.setattr(scratch, "model_infer", lambda *a, **k: seen.append(1))
    model.train()
    model.rng = np.random.default_rng(0)
    y = model(x)
    assert not seen and y.shape == expected.shape


def _head_count(config):
    params, _ = scratch.model_parameter_shapes(config)
    return sum(int(np.prod(v)) for k, v in params.items() if k.startswith("classifier."))


def test_v2_heads():
    """v2 on ResNet-101 is the released model's head: classifier.branches.{i} = one 3x3 conv 2048 -> 21
    at rate (6, 12, 18, 24)[i] with bias (Caffe's fc1_voc12_c{i}), 4 x (2048 * 21 * 9 + 21) parameters;
    v2 on VGG-16 keeps fc6-fc7-fc8 (1024 wide), 23.2 M. The twin has the same names and counts."""
    r101 = scratch.make_config("v2", "resnet101")
    params, buffers = scratch.model_parameter_shapes(r101)
    head = {k: v for k, v in params.items() if k.startswith("classifier.")}
    assert list(head) == [f"classifier.branches.{i}.{t}" for i in range(4) for t in ("weight", "bias")]
    assert head["classifier.branches.0.weight"] == (21, 2048, 3, 3)
    assert _head_count(r101) == 4 * (2048 * 21 * 9 + 21) == 1_548_372
    assert not any(k.startswith("classifier.") for k in buffers)
    vgg = scratch.make_config("v2", "vgg16")
    assert _head_count(vgg) == 4 * (512 * 1024 * 9 + 1024 + 1024 * 1024 + 1024 + 1024 * 21 + 21) == 23_162_964
    assert scratch.model_parameter_shapes(vgg)[0]["classifier.branches.3.fc6.weight"] == (1024, 512, 3, 3)
    mini = scratch.make_config("v2", "mini", num_classes=3)
    t = ref.DeepLabModule(mini)
    assert [k for k, _ in t.named_parameters()] == list(scratch.model_parameter_shapes(mini)[0])
    assert [(c.dilation[0], c.padding[0]) for c in t.classifier.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert not any(isinstance(m, ref.Dropout) for m in t.classifier.modules())


def test_init_model():
    """The backbone's weights are init_backbone's draws (they come first); head convs Kaiming fan-out, BN 1 / 0."""
    model = scratch.build_model("v3", "resnet18", num_classes=4, aux=True, rng=np.random.default_rng(3), dtype=F64)
    params, buffers = init_backbone(ResNet(18, 16), np.random.default_rng(3), F64)
    assert all(np.array_equal(model.params[f"backbone.{k}"], v) for k, v in params.items())
    assert set(model.buffers) >= {f"backbone.{k}" for k in buffers}
    w = model.params["classifier.1.weight"]  # 256 x 256 x 3 x 3
    assert abs(w.std() / np.sqrt(2 / (256 * 9)) - 1) < 0.02
    assert (model.params["classifier.4.bias"] == 0).all() and (model.params["aux_classifier.1.weight"] == 1).all()
    assert model.params["aux_classifier.0.weight"].shape == (64, 256, 3, 3)  # layer3 / 4, as FCNHead


# --------------------------------------------------------------------------- mini heads, class-score init

def test_mini_heads_are_a_quarter_wide():
    """The mini backbone (ResNet-50's widths / 4) gets heads a quarter of the paper's unless the caller sets
    them: ASPP 64, low_level 12, decoder 64 (2.19 M parameters for 7 classes instead of 6.56 M); an explicit
    option wins; other backbones keep the paper's 256 / 48 / 256. The twin builds the same shapes."""
    plus = scratch.make_config("v3plus", "mini", num_classes=7)
    assert (plus.aspp_channels, plus.low_level_channels, plus.decoder_channels) == (64, 12, 64)
    assert plus == scratch.make_config("v3plus", ResNet("mini", 16), num_classes=7)  # named or a spec
    params, buffers = scratch.model_parameter_shapes(plus)
    assert params["decoder.low_level.0.weight"] == (12, 64, 1, 1)
    assert params["decoder.fuse.0.0.weight"] == (64, 76, 3, 3)
    assert sum(np.prod(v) for v in params.values()) == 2_190_575
    twin = ref.build_model("v3plus", "mini", num_classes=7)
    assert {k: tuple(v.shape) for k, v in twin.state_dict().items()} == params | buffers
    full = scratch.make_config("v3plus", "mini", num_classes=7, aspp_channels=256, low_level_channels=48,
                               decoder_channels=256)
    assert sum(np.prod(v) for v in scratch.model_parameter_shapes(full)[0].values()) == 6_564_983
    some = scratch.make_config("v3plus", "mini", decoder_channels=32)
    assert (some.aspp_channels, some.low_level_channels, some.decoder_channels) == (64, 12, 32)
    v3 = scratch.make_config("v3", "mini", aux=True)
    assert v3.aspp_channels == 64 and v3.aux_channels == (256, 64)  # the aux head: layer3 / 4 already
    assert scratch.make_config("v3", "mini", aspp_channels=256).aspp_channels == 256
    assert scratch.make_config("v2", "mini").aspp == ASPPL(512, 21, fc_channels=None)  # no width of its own
    r18 = scratch.make_config("v3plus", "resnet18")
    assert (r18.aspp_channels, r18.low_level_channels, r18.decoder_channels) == (256, 48, 256)


# every form of head, with 7 classes: no other width is 7
SCORE_CASES = [
    ("v1", dict(backbone=NARROW_VGG), {"classifier.fc8"}),
    ("v2", dict(backbone="mini"), {f"classifier.branches.{i}" for i in range(4)}),
    ("v2", dict(backbone=NARROW_VGG, fc_channels=12), {f"classifier.branches.{i}.fc8" for i in range(4)}),
    ("v3", dict(backbone="mini", aux=True), {"classifier.4", "aux_classifier.4"}),
    ("v3plus", dict(backbone="mini"), {"classifier"}),
    ("v3plus", dict(backbone="mini", decoder_layout="smp", aspp_separable=True, decoder_separable=True),
     {"classifier"}),
]
SCORE_IDS = [f"{c[0]}-{'vgg' if isinstance(c[1]['backbone'], VGG) else 'mini'}-{i}" for i, c in enumerate(SCORE_CASES)]


@pytest.mark.parametrize("name, options, scores", SCORE_CASES, ids=SCORE_IDS)
def test_score_layers_are_the_convs_to_the_classes(name, options, scores):
    """is_score_layer names exactly the head's convs with num_classes outputs, each with a bias."""
    params = scratch.model_parameter_shapes(scratch.make_config(name, num_classes=7, **options))[0]
    convs = {k[:-len(".weight")]: v for k, v in params.items() if len(v) == 4 and not k.startswith("backbone.")}
    by_rule = {k for k in convs if scratch.is_score_layer(k)}
    by_shape = {k for k, v in convs.items() if v[0] == 7}
    assert by_rule == by_shape == scores
    assert all(params[f"{k}.bias"] == (7,) for k in scores)


@pytest.mark.parametrize("name, options, scores", SCORE_CASES, ids=SCORE_IDS)
def test_score_layers_init(name, options, scores):
    """Scratch: the class-score convs are N(0, 0.01) with zero bias, from the same draws as the Kaiming init
    (scaled), every other array unchanged; build_model = init_model. The twin: score convs std 0.01, bias 0,
    the other head convs Kaiming fan-out (std within 5 standard errors of the sample std)."""
    from minideeplab.scratch.backbone import init_params

    config = scratch.make_config(name, num_classes=7, **options)
    shapes, buffer_shapes = scratch.model_parameter_shapes(config)
    params, _ = scratch.init_model(config, np.random.default_rng(0), F64)
    kaiming, _ = init_params(shapes, buffer_shapes, np.random.default_rng(0), F64)
    for k, v in params.items():
        if k[:-len(".weight")] in scores:
            fan_out = v.shape[0] * v.shape[2] * v.shape[3]
            assert np.allclose(v, kaiming[k] * 0.01 / np.sqrt(2 / fan_out), rtol=1e-12, atol=0), k
            assert (params[k[:-len(".weight")] + ".bias"] == 0).all()
        else:
            assert np.array_equal(v, kaiming[k]), k
    built = scratch.build_model(name, num_classes=7, rng=np.random.default_rng(0), dtype=F64, **options)
    assert all(np.array_equal(built.params[k], v) for k, v in params.items())

    torch.manual_seed(0)
    twin = ref.build_model(name, num_classes=7, **options)
    for k, m in twin.named_modules():
        if isinstance(m, torch.nn.Conv2d) and not k.startswith("backbone."):
            w = m.weight.detach().numpy()
            std = 0.01 if k in scores else np.sqrt(2 / (m.out_channels // m.groups * w.shape[2] * w.shape[3]))
            assert abs(w.std() / std - 1) < 5 / np.sqrt(2 * w.size), (k, w.std(), std)
            assert k not in scores or (m.bias.detach().numpy() == 0).all()


# (name, options, bound on |loss - ln C|): v2's ResNet form sums four 3x3 convs over the backbone's
# un-normalised 512 channels, logits of std about 0.01 * sqrt(4 * 9 * 512) * rms(features) ~ 0.5: measured
# 0.11 to 0.27 above ln 7 over 5 seeds (Kaiming there: about 15); the others within 0.006
LOSS_CASES = [(name, options, 0.5 if name == "v2" and options["backbone"] == "mini" else 0.05)
              for name, options, _ in SCORE_CASES]


@pytest.mark.parametrize("name, options, bound", LOSS_CASES, ids=SCORE_IDS)
def test_fresh_model_loss_is_near_ln_classes(name, options, bound):
    """A fresh model's first training loss (batch statistics, dropout) on random images and labels is
    about ln(num_classes), the uniform prediction's, in scratch and in the twin (the aux head's too): the
    point of DeepLab's N(0, 0.01) score layers (Kaiming there: 6 to 20 with 7 classes)."""
    import torch.nn.functional as F

    from minideeplab.scratch.layers import softmax_cross_entropy

    C, rng = 7, np.random.default_rng(0)
    x, target = rng.standard_normal((2, 3, 48, 48)), rng.integers(0, C, (2, 48, 48))
    model = scratch.build_model(name, num_classes=C, rng=np.random.default_rng(1), dtype=F64, **options).train()
    logits, cache = model.forward(x)
    losses = [softmax_cross_entropy(logits, target)[0]]
    losses += [softmax_cross_entropy(cache.aux, target)[0]] if cache.aux is not None else []
    torch.manual_seed(1)
    twin = ref.build_model(name, num_classes=C, **options)
    assert twin.training
    with torch.no_grad():
        out = twin(torch.from_numpy(x.astype(F32)))
    losses += [F.cross_entropy(v, torch.from_numpy(target)).item() for v in out.values()]
    assert len(losses) == (4 if options.get("aux") else 2)
    assert max(abs(v - np.log(C)) for v in losses) < bound, losses


def test_round_trip():
    model = nontrivial_model("v2", F64, backbone=NARROW_VGG, fc_channels=8)
    assert not any(k.startswith(("backbone.fc6", "backbone.fc7")) for k in model.params)  # v2 VGG ends at pool5
    t = ref.to_torch(model.train())
    assert t.training and next(t.parameters()).dtype == torch.float64
    back = ref.to_scratch(t)
    assert back.config == model.config and back.training
    assert all(np.array_equal(back.params[k], v) for k, v in model.params.items())
    back.params["classifier.branches.0.fc6.weight"][...] = 0
    assert model.params["classifier.branches.0.fc6.weight"].any()  # copies
    model = nontrivial_model("v2", F64, backbone="mini")  # the ResNet form
    back = ref.to_scratch(ref.to_torch(model))
    assert back.config == model.config and back.config.fc_channels is None
    assert all(np.array_equal(back.params[k], v) for k, v in model.params.items())
    assert "classifier.branches.3.weight" in back.params


# --------------------------------------------------------------------------- input sizes and bad input

def test_align_corners_sizes():
    """v3+ with align_corners=True takes k * OS (smp) and k * OS + 1 (TF) only; align_corners=False any size."""
    model = scratch.build_model("v3plus", "mini", num_classes=2, align_corners=True, rng=np.random.default_rng(0))
    for hw in ((32, 48), (33, 49), (17, 32)):
        assert model(np.zeros((1, 3) + hw, F32)).shape == (1, 2) + hw
    with pytest.raises(ValueError, match=r"DeepLab.forward: x has shape \(1, 3, 35, 32\), but DeepLab v3plus \(mini, "
                                         r"output stride 16\) with align_corners=True needs H and W = k \* 16 \(smp\) or "
                                         r"k \* 16 \+ 1 \(TF DeepLab\).* nearest: H in 32, 33, 48"):
        model(np.zeros((1, 3, 35, 32), F32))
    loose = scratch.build_model("v3plus", "mini", num_classes=2, rng=np.random.default_rng(0))
    assert loose(np.zeros((1, 3, 35, 30), F32)).shape == (1, 2, 35, 30)


_M = scratch.build_model("v3", "mini", num_classes=3, rng=np.random.default_rng(0))
_X = np.zeros((2, 3, 33, 33), F32)
_Y, _CACHE = _M.forward(_X)
_AUX = scratch.build_model("v3", "mini", num_classes=3, aux=True, rng=np.random.default_rng(0))


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


BAD = [
    ("make_config", lambda: scratch.make_config("v4"), "name must be one of 'v1', 'v2', 'v3', 'v3plus', 'lraspp', 'linear', 'segformer', got 'v4'"),
    ("make_config", lambda: scratch.make_config("v3", "resnet42"), "backbone must be a ResNet, VGG, .*spec or one of .* got 'resnet42'"),
    ("make_config", lambda: scratch.make_config("v3", "vgg16"), "v3 needs a ResNet, MobileNetV3.* backbone, got VGG"),
    ("make_config", lambda: scratch.make_config("v1", "resnet50"), r"v1 \(DeepLab-LargeFOV\) needs a VGG backbone"),
    ("make_config", lambda: scratch.make_config("v1", output_stride=16), "VGG-16 LargeFOV has output stride 8, got output_stride=16"),
    ("make_config", lambda: scratch.make_config("v3", output_stride=4), "ResNet: output_stride must be 8, 16 or 32, got 4"),
    ("make_config", lambda: scratch.make_config("v3", ResNet(50, 8), 16), "output_stride=16 but the backbone spec"),
    ("make_config", lambda: scratch.make_config("v3", ResNet(50), multi_grid=(1, 2, 4)), "multi_grid and dilation_convention are set in a backbone spec"),
    ("make_config", lambda: scratch.make_config("v3", aspp_rates=(1, 2)), "unknown option 'aspp_rates'; the options are atrous_rates"),
    ("make_config", lambda: scratch.make_config("v3", decoder_separable=True), "decoder_separable=True applies to v3plus only, not v3"),
    ("make_config", lambda: scratch.make_config("v3plus", aux=True), "aux=True applies to v3 only, not v3plus"),
    ("make_config", lambda: scratch.make_config("v2", aspp_separable=True), "aspp_separable=True applies to v3 and v3plus only"),
    ("make_config", lambda: scratch.make_config("v3", dropout=1), r"dropout must be a number in \[0, 1\), got 1"),
    ("make_config", lambda: scratch.make_config("v3", fc_channels=1024), "fc_channels=1024 applies to v2 only, not v3"),
    ("make_config", lambda: scratch.make_config("v1", fc_channels=None), "fc_channels=None applies to v2 only, not v1"),
    ("make_config", lambda: scratch.make_config("v2", fc_channels=0), r"fc_channels must be 'auto', None \(v2's ResNet "
                                                                       r"form: one 3x3 conv per rate\) or an int >= 1"),
    ("make_config", lambda: scratch.make_config("v2", fc_channels="vgg"), "fc_channels must be 'auto', None or an int >= 1, got 'vgg'"),
    ("make_config", lambda: scratch.make_config("v2", dropout=0.1), r"dropout=0.1 applies to v2's fc6-fc7-fc8 head \(fc_channels "
                                                                     r"an int\) only: with fc_channels=None"),
    ("make_config", lambda: scratch.make_config("v3", num_classes=0), "num_classes must be an int >= 1, got 0"),
    ("make_config", lambda: scratch.make_config("v3", atrous_rates=[]), r"atrous_rates must be None or a non-empty tuple"),
    ("make_config", lambda: scratch.make_config("v1", VGG(), atrous_rates=(6,)), r"v1's one atrous rate is its VGG's fc6_rate \(12\)"),
    ("DeepLabConfig", lambda: scratch.DeepLabConfig("v3", "resnet50"), "backbone must be a ResNet, VGG, .*spec, got str"),
    ("build_model", lambda: scratch.build_model("v3", "mini", rng=1), "rng must be a numpy.random.Generator or None, got int"),
    ("build_model", lambda: scratch.build_model("v3", "mini", dtype=np.float16), "dtype must be float32 or float64, got float16"),
    ("DeepLab", lambda: scratch.DeepLab(_M.config, _without(_M.params, "classifier.4.bias"), _M.buffers),
     r"params do not match DeepLab v3 \(mini, output stride 16\): missing 'classifier.4.bias'"),
    ("DeepLab", lambda: scratch.DeepLab(_M.config, _AUX.params, _AUX.buffers), "unexpected 'aux_classifier.0.weight'"),
    ("DeepLab.forward", lambda: _M(np.zeros((1, 3, 15, 40), F32)),
     r"x has shape \(1, 3, 15, 40\), but DeepLab v3 \(mini, output stride 16\) needs H and W >= 16"),
    ("DeepLab.forward", lambda: _M(np.zeros((1, 1, 33, 33), F32)), r"x has shape \(1, 1, 33, 33\), expected 3 channels"),
    ("DeepLab.forward", lambda: _M(np.zeros((3, 33, 33), F32)), r"x must be 4-D \(N, C, H, W\), got shape \(3, 33, 33\)"),
    ("DeepLab.forward", lambda: _M(np.zeros((1, 3, 33, 33), np.uint8)), "x has dtype uint8, expected float32 or float64"),
    ("DeepLab.forward", lambda: _M([[0.0]]), "x must be a numpy array, got list"),
    ("DeepLab.forward", lambda: _M(np.zeros((1, 3, 33, 33))), r"params\['backbone.conv1.weight'\] has dtype float32 but x has dtype float64"),
    ("DeepLab.forward", lambda: scratch.DeepLab(_M.config, _M.params, _M.buffers, True).forward(np.zeros((1, 3, 33, 33), F32)),
     r"x has shape \(1, 3, 33, 33\): training with image_pooling needs N >= 2"),
    ("DeepLab.forward", lambda: scratch.DeepLab(_M.config, _M.params, _M.buffers, True).forward(np.zeros((1, 3, 16, 16), F32)),
     r"x has shape \(1, 3, 16, 16\), which gives a 1x1 last stage: training \(batch norm\) needs N \* H_out \* W_out >= 2"),
    ("DeepLab.backward", lambda: _M.backward(_Y[:, :2], _CACHE), r"dlogits has shape \(2, 2, 33, 33\), expected \(2, 3, 33, 33\)"),
    ("DeepLab.backward", lambda: _M.backward(_Y.astype(F64), _CACHE), "dlogits has dtype float64 but the forward's x had float32"),
    ("DeepLab.backward", lambda: _M.backward(_Y, _CACHE, daux=_Y), r"daux given, but the forward computed no aux logits"),
    ("DeepLab.backward", lambda: _M.backward(_Y, {}), "cache must be the DeepLabCache returned by the forward, got dict"),
    ("DeepLab.train", lambda: _M.train("yes"), "mode must be True or False, got 'yes'"),
    ("sgd_step", lambda: scratch.sgd_step({"a": np.zeros(2)}, {"b": np.zeros(2)}, 0.1), "grads has keys that are not in params: 'b'"),
    ("sgd_step", lambda: scratch.sgd_step({"a": np.zeros(2)}, {"a": np.zeros(3)}, 0.1),
     r"grads\['a'\] is \(3,\) float64, expected \(2,\) float64 like params\['a'\]"),
    ("sgd_step", lambda: scratch.sgd_step({"a": np.zeros(2)}, {"a": np.zeros(2)}, -0.1), "lr must be a number >= 0, got -0.1"),
]


@pytest.mark.parametrize("fn, call", [("make_config", lambda: scratch.make_config("v3", aux=1)),
                                      ("build_model", lambda: scratch.build_model("v3", "mini", dropout=2))])
def test_config_errors_name_the_function_once(fn, call):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(fn + ": ") and "DeepLabConfig" not in str(info.value)


@pytest.mark.parametrize("fn, call, message", [pytest.param(*b, id=f"{b[0]}-{i}") for i, b in enumerate(BAD)])
def test_bad_input(fn, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert str(info.value).startswith(fn + ":")
