"""Dilated backbones: the specs' stride/dilation tables against the conventions (and torchvision's own
modules), the scratch forward and backward against the PyTorch twins, and torchvision weights loading."""

from functools import lru_cache

import numpy as np
import pytest
import torch
import torchvision

from minideeplab.reference import backbone as ref
from minideeplab.scratch import backbone as scratch
from minideeplab.scratch import resnet, units
from minideeplab.scratch.backbone import VGG, ResNet

from helpers import rel

F32, F64 = np.float32, np.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_params(spec, dtype, seed):
    """init_backbone, then BN affine parameters, running statistics and conv biases away from their
    initial 1 / 0, so that eval mode and every parameter's gradient are non-trivial."""
    rng = np.random.default_rng(seed)
    params, buffers = scratch.init_backbone(spec, rng, F64)
    for k, v in params.items():
        if v.ndim == 1:
            params[k] = (rng.uniform(0.5, 1.5, v.shape) if k.endswith(".weight") and "fc" not in k
                         and not k.startswith("features.") else 0.1 * rng.standard_normal(v.shape))
    for k, v in buffers.items():
        if k.endswith("running_mean"):
            buffers[k] = 0.1 * rng.standard_normal(v.shape)
        elif k.endswith("running_var"):
            buffers[k] = rng.uniform(0.5, 2, v.shape)
    cast = {k: v.astype(dtype) for k, v in params.items()}
    cast_b = {k: v.astype(dtype) if v.dtype.kind == "f" else v.copy() for k, v in buffers.items()}
    return cast, cast_b


@lru_cache(maxsize=None)
def _module(spec):
    return ref.build_backbone(spec)


def _torch(spec, params, buffers, training):
    """The reference module holding copies of params and buffers, in params' dtype."""
    m = ref.params_to_torch(_module(spec), params, {k: v.copy() for k, v in buffers.items()})
    return m.train(training)


def _f64(d):
    return {k: v.astype(F64) if v.dtype.kind == "f" else v.copy() for k, v in d.items()}


# --------------------------------------------------------------------------- specs: stride and dilation

def _table(spec, *names):
    t = spec.conv_table()
    return [t[n] for n in names]


def test_resnet_specs():
    r50, r18, mini = ResNet(50), ResNet(18), ResNet("mini")
    assert (r50.block, r50.blocks, r50.widths, r50.stem_width) == ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64)
    assert (r50.low_level_channels, r50.out_channels) == (256, 2048)
    assert (r18.block, r18.blocks, r18.low_level_channels, r18.out_channels) == ("basic", (2, 2, 2, 2), 64, 512)
    assert ResNet(101).blocks == (3, 4, 23, 3) and ResNet(34).blocks == (3, 4, 6, 3)
    assert (mini.block, mini.blocks, mini.widths, mini.stem_width) == ("bottleneck", (1, 1, 2, 3), (16, 32, 64, 128), 16)
    assert r50.output_stride == 16 and r50.dilation_convention == "torchvision"  # the defaults
    assert ResNet(50, 8, multi_grid=[1, 2, 4]) == ResNet(50, 8, multi_grid=(1, 2, 4))  # a list is kept as a tuple
    assert repr(r50) == "ResNet(depth=50, output_stride=16, dilation_convention='torchvision', multi_grid=None)"
    with pytest.raises(AttributeError):
        r50.output_stride = 8  # frozen


def test_table_torchvision_os8():
    """The facts file: layer3 block0 d=1 (stride 1), later blocks d=2; layer4 block0 d=2, later d=4;
    stride and dilation on the 3x3 conv2; 1x1 convs and downsamples undilated, stride 1."""
    s = ResNet(50, 8, "torchvision")
    t = s.conv_table()
    assert t["conv1"] == (2, 1)
    assert _table(s, "layer1.0.conv2", "layer1.0.downsample.0") == [(1, 1), (1, 1)]
    assert _table(s, "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2") == [(2, 1), (2, 1), (1, 1)]
    assert _table(s, "layer3.0.conv2", "layer3.0.downsample.0") == [(1, 1), (1, 1)]
    assert [t[f"layer3.{j}.conv2"] for j in range(1, 6)] == [(1, 2)] * 5
    assert _table(s, "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2", "layer4.2.conv2") == \
        [(1, 2), (1, 1), (1, 4), (1, 4)]
    assert all(t[f"layer{i}.{j}.conv{k}"] == (1, 1) for i, n in zip(range(1, 5), s.blocks)
               for j in range(n) for k in (1, 3))
    assert "layer2.1.downsample.0" not in t and len(t) == 1 + 3 * 16 + 4  # convs + one downsample per stage


def test_table_torchvision_os16():
    s = ResNet(101, 16, "torchvision")
    assert _table(s, "layer3.0.conv2", "layer3.0.downsample.0", "layer3.22.conv2") == [(2, 1), (2, 1), (1, 1)]
    assert _table(s, "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2", "layer4.2.conv2") == \
        [(1, 1), (1, 1), (1, 2), (1, 2)]


def test_table_smp():
    """Every conv of a dilated stage, block0 and the downsample included: stride 1 and the stage's rate."""
    s = ResNet(50, 8, "smp")
    t = s.conv_table()
    assert all(v == (1, 2) for k, v in t.items() if k.startswith("layer3."))
    assert all(v == (1, 4) for k, v in t.items() if k.startswith("layer4."))
    assert _table(s, "layer2.0.conv2", "layer2.0.downsample.0") == [(2, 1), (2, 1)]
    s16 = ResNet(50, 16, "smp").conv_table()
    assert s16["layer3.0.conv2"] == (2, 1) and s16["layer3.0.downsample.0"] == (2, 1)
    assert all(v == (1, 2) for k, v in s16.items() if k.startswith("layer4."))


def test_table_os32_is_plain_resnet():
    for depth in (18, 50):
        tv, smp = ResNet(depth, 32, "torchvision").conv_table(), ResNet(depth, 32, "smp").conv_table()
        assert tv == smp and all(d == 1 for _, d in tv.values())
        first = "conv1" if depth == 18 else "conv2"
        assert [tv[f"layer{i}.0.{first}"] for i in (1, 2, 3, 4)] == [(1, 1), (2, 1), (2, 1), (2, 1)]


def test_table_basic_blocks():
    """Basic blocks: both 3x3 convs of a block share its dilation; the stride is on conv1."""
    t = ResNet(18, 8, "torchvision").conv_table()
    assert _table(ResNet(18, 8), "layer3.0.conv1", "layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2") == \
        [(1, 1), (1, 1), (1, 2), (1, 2)]
    assert [t[f"layer4.{j}.conv{k}"] for j in (0, 1) for k in (1, 2)] == [(1, 2), (1, 2), (1, 4), (1, 4)]
    assert t["layer2.0.conv1"] == (2, 1) and t["layer2.0.conv2"] == (1, 1)
    assert "layer1.0.downsample.0" not in t  # 64 -> 64 at stride 1: identity shortcut
    smp = ResNet(18, 8, "smp").conv_table()
    assert all(v == (1, 4) for k, v in smp.items() if k.startswith("layer4."))


@pytest.mark.parametrize("convention, os_, expected", [
    ("torchvision", 16, (2, 4, 8)), ("smp", 16, (2, 4, 8)),
    ("torchvision", 8, (4, 8, 16)), ("smp", 8, (4, 8, 16)), ("torchvision", 32, (1, 2, 4)),
])
def test_multi_grid(convention, os_, expected):
    """DeepLab v3's unit rates times layer4's rate, for every block (the paper's (2, 4, 8) at OS 16, also
    where the torchvision convention would keep block0 at the previous rate); nothing else moves."""
    s = ResNet(50, os_, convention, multi_grid=(1, 2, 4))
    assert tuple(b.dilation for b in s.stages[3]) == expected
    assert tuple(s.conv_table()[f"layer4.{j}.conv2"][1] for j in range(3)) == expected
    plain = ResNet(50, os_, convention)
    assert s.stages[:3] == plain.stages[:3]
    assert [b.stride for b in s.stages[3]] == [b.stride for b in plain.stages[3]]


@pytest.mark.parametrize("dilate", [[False, False, False], [False, False, True], [False, True, True]])
def test_table_is_torchvision(dilate):
    """The torchvision convention's table is the stride, dilation and padding of torchvision's own convs."""
    tv = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilate)
    spec = ResNet(50, 32 // 2 ** sum(dilate), "torchvision")
    table = spec.conv_table()
    convs = {n: m for n, m in tv.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(convs) == set(table)
    for name, m in convs.items():
        stride, dilation = table[name]
        assert (m.stride, m.dilation) == ((stride,) * 2, (dilation,) * 2), name
        assert m.padding == (dilation * (m.kernel_size[0] - 1) // 2,) * 2, name


@pytest.mark.parametrize("spec", [ResNet("mini", 8, "smp"), ResNet(18, 16, "torchvision", multi_grid=(2, 3)),
                                  ResNet(50, 8, "smp", (1, 2, 4))], ids=repr)
def test_reference_modules_follow_the_table(spec):
    m = _module(spec)
    convs = {n: c for n, c in m.named_modules() if isinstance(c, torch.nn.Conv2d)}
    table = spec.conv_table()
    assert set(convs) == set(table)
    for name, c in convs.items():
        assert (c.stride[0], c.dilation[0]) == table[name], name
        assert c.padding[0] == c.dilation[0] * (c.kernel_size[0] - 1) // 2


@pytest.mark.parametrize("spec", [ResNet("mini"), ResNet(18, 8), ResNet(34, 32, "smp"), ResNet(50), VGG(),
                                  VGG((8, 8, 16, 16, 16), 32)], ids=repr)
def test_names_and_shapes_are_the_state_dict(spec):
    shapes, buffer_shapes = scratch.parameter_shapes(spec)
    state = _module(spec).state_dict()
    assert list(state) == [k for k in state if k in shapes or k in buffer_shapes]  # nothing extra
    assert set(state) == set(shapes) | set(buffer_shapes) and not set(shapes) & set(buffer_shapes)
    assert [k for k in state if k in shapes] == list(shapes)  # same order
    for k, v in state.items():
        assert tuple(v.shape) == (shapes | buffer_shapes)[k], k
    params, buffers = ref.params_from_torch(_module(spec))
    assert list(params) == list(shapes) and list(buffers) == list(buffer_shapes)


def test_vgg_layers():
    s = VGG()
    convs = [l for l in s.layers if l.kind == "conv"]
    pools = [l for l in s.layers if l.kind == "pool"]
    assert [l.name for l in convs] == [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)] + ["fc6", "fc7"]
    assert [(l.name, l.kernel, l.stride) for l in pools] == [
        ("features.4", 3, 2), ("features.9", 3, 2), ("features.16", 3, 2), ("features.23", 3, 1), ("features.30", 3, 1)]
    assert [l.dilation for l in convs] == [1] * 10 + [2, 2, 2, 12, 1]
    assert (convs[-2].kernel, convs[-2].out_channels, convs[-1].kernel, convs[-1].out_channels) == (3, 1024, 1, 1024)
    assert (s.output_stride, s.low_level_layer, s.low_level_channels, s.out_channels) == (8, "features.14", 256, 1024)


def test_vgg_loads_torchvision_vgg16_features():
    """torchvision's VGG-16 conv weights load by name; only fc6 and fc7 (DeepLab's convs) are missing."""
    from torchvision.models.vgg import cfgs, make_layers
    features = make_layers(cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    result = ref.VGGLargeFOV(VGG()).load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ["fc6.bias", "fc6.weight", "fc7.bias", "fc7.weight"]


# --------------------------------------------------------------------------- init

def test_init_backbone():
    spec = ResNet(50, 8)
    params, buffers = scratch.init_backbone(spec, np.random.default_rng(0), F64)
    w = params["layer4.0.conv2.weight"]  # 512 x 512 x 3 x 3
    assert abs(w.std() / np.sqrt(2 / (512 * 9)) - 1) < 0.01 and abs(w.mean()) < 1e-3  # Kaiming fan-out
    assert (params["bn1.weight"] == 1).all() and (params["layer1.0.bn3.bias"] == 0).all()
    assert (buffers["bn1.running_var"] == 1).all() and (buffers["layer4.2.bn1.running_mean"] == 0).all()
    assert buffers["bn1.num_batches_tracked"].dtype == np.int64 and buffers["bn1.num_batches_tracked"] == 0
    p32, _ = scratch.init_backbone(spec, np.random.default_rng(0))
    assert all(v.dtype == F32 for v in p32.values())
    assert np.array_equal(p32["conv1.weight"], params["conv1.weight"].astype(F32))  # same draws, seeded
    vp, vb = scratch.init_backbone(VGG(), np.random.default_rng(1))
    assert vb == {} and (vp["fc6.bias"] == 0).all()
    assert abs(vp["fc6.weight"].std() / np.sqrt(2 / (1024 * 9)) - 1) < 0.01


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("os_", [8, 16, 32])
@pytest.mark.parametrize("shape", [(1, 3, 33, 33), (2, 3, 40, 57)], ids=str)
def test_shapes_and_strides(os_, shape):
    spec = ResNet("mini", os_)
    params, buffers = scratch.init_backbone(spec, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal(shape).astype(F32)
    f, _ = scratch.backbone_forward(spec, params, buffers, x, False)
    N, _, H, W = shape
    assert f["low_level"].shape == (N, 64, -(-H // 4), -(-W // 4))
    assert f["out"].shape == (N, 512, -(-H // os_), -(-W // os_))
    assert f["out"].dtype == F32 and f["low_level"].dtype == F32
    for depth, low, out in ((50, 256, 2048), (18, 64, 512)):  # full widths, through the twins (fast)
        with torch.no_grad():
            g = _module(ResNet(depth, os_)).float().eval()(torch.zeros(1, 3, 65, 65))
        assert tuple(g["low_level"].shape) == (1, low, 17, 17)
        assert tuple(g["out"].shape) == (1, out, -(-65 // os_), -(-65 // os_))


def test_vgg_shapes():
    spec = VGG((4, 4, 8, 8, 8), 8)
    params, buffers = scratch.init_backbone(spec, np.random.default_rng(0))
    f, _ = scratch.backbone_forward(spec, params, buffers, np.ones((2, 3, 41, 30), F32), False)
    assert f["low_level"].shape == (2, 8, 11, 8) and f["out"].shape == (2, 8, 6, 4)


def test_smallest_input():
    """H = W = output stride is the smallest accepted input: a 1x1 last stage."""
    spec = ResNet("mini", 8)
    params, buffers = scratch.init_backbone(spec, np.random.default_rng(0))
    f, _ = scratch.backbone_forward(spec, params, buffers, np.ones((1, 3, 8, 8), F32), False)
    assert f["out"].shape == (1, 512, 1, 1)
    f, _ = scratch.backbone_forward(spec, params, buffers, np.ones((2, 3, 8, 8), F32), True)  # N * 1 * 1 = 2
    assert f["out"].shape == (2, 512, 1, 1)


# --------------------------------------------------------------------------- forward against the twins

FORWARD_SPECS = [ResNet("mini", 8, "torchvision"), ResNet("mini", 16, "smp", (1, 2, 4)),
                 ResNet(18, 8, "torchvision"), ResNet(18, 16, "smp"), ResNet(50, 16, "torchvision"),
                 ResNet(50, 8, "smp")]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("spec", FORWARD_SPECS, ids=repr)
def test_forward_matches_torch(spec, training):
    """float64: tight. float32 eval: 1e-5 of max |out|. float32 train: batch norm on the few values of a
    small batch amplifies rounding (resnet50's layer4 is ~1e-4 from the float64 answer in torch's own
    float32 as in ours), so there the scratch float32 must be as close to the float64 answer as torch's."""
    params, buffers = _random_params(spec, F32, seed=FORWARD_SPECS.index(spec))
    x = np.random.default_rng(2).standard_normal((2, 3, 33, 33)).astype(F32)
    p64, b64 = _f64(params), _f64(buffers)  # the same numbers, in float64
    results = {}
    for dtype, (p, b) in ((F32, (params, buffers)), (F64, (p64, b64))):
        m = _torch(spec, p, b, training)
        with torch.no_grad():
            ft = {k: v.numpy() for k, v in m(torch.from_numpy(x.astype(dtype))).items()}
        b_before = {k: v.copy() for k, v in b.items()}
        f, _ = scratch.backbone_forward(spec, p, b, x.astype(dtype), training)
        results[dtype] = f, ft, b, {k: v.numpy() for k, v in m.state_dict().items()}
        if not training:  # the lean eval path: the same features, no caches; layer3 too
            fi = scratch.backbone_infer(spec, p, b, x.astype(dtype))
            assert list(fi) == ["low_level", "layer3", "out"]
            for k in ("low_level", "out"):
                assert fi[k].dtype == dtype and rel(fi[k], ft[k]) <= (1e-12 if dtype == F64 else 1e-5), k
            with torch.no_grad():
                stem = m.maxpool(torch.relu(m.bn1(m.conv1(torch.from_numpy(x.astype(dtype))))))
                l3 = m.layer3(m.layer2(m.layer1(stem)))
            assert rel(fi["layer3"], l3.numpy()) <= (1e-12 if dtype == F64 else 1e-5)
        for k in ("low_level", "out"):
            assert f[k].dtype == dtype
        changed = [k for k in b if not np.array_equal(b[k], b_before[k])]
        assert changed == ([] if not training else list(b))  # training moves every buffer, eval none
    (f32, t32, b32, tb32), (f64, t64, b64, tb64) = results[F32], results[F64]
    for k in ("low_level", "out"):
        assert rel(f64[k], t64[k]) < 1e-12
        if training:
            assert rel(f32[k], t64[k]) <= max(2 * rel(t32[k], t64[k]), 1e-5)
        else:
            assert rel(f32[k], t32[k]) <= 1e-5
    if training:  # the running statistics moved, as torch's did
        for k in b64:
            if k.endswith("num_batches_tracked"):
                assert b64[k] == tb64[k] == 1 and b32[k] == 1
            else:
                assert rel(b64[k], tb64[k]) < 1e-12, k
                assert rel(b32[k], tb64[k]) <= max(2 * rel(tb32[k], tb64[k]), 1e-5), k


def test_infer_keeps_nothing_for_a_backward(monkeypatch):
    """backbone_infer never runs the caching pieces (batch norm with its cache, max pool's argmax)."""
    spec = ResNet("mini", 8)
    params, buffers = _random_params(spec, F32, seed=0)
    x = np.random.default_rng(3).standard_normal((1, 3, 33, 33)).astype(F32)
    expected, _ = scratch.backbone_forward(spec, params, buffers, x, False)
    for module, name in ((units, "batch_norm2d"), (resnet, "max_pool2d"), (resnet, "conv_bn_forward")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("a caching forward ran"))
    f = scratch.backbone_infer(spec, params, buffers, x)
    assert rel(f["out"], expected["out"]) <= 1e-5


def test_bn_scale_shift_is_eval_batch_norm():
    from minideeplab.scratch.layers import batch_norm2d

    rng = np.random.default_rng(4)
    params = {"bn.weight": rng.uniform(0.5, 1.5, 6), "bn.bias": rng.standard_normal(6)}
    buffers = {"bn.running_mean": rng.standard_normal(6), "bn.running_var": rng.uniform(0.5, 2, 6)}
    x = rng.standard_normal((2, 6, 3, 4))
    scale, shift = units.bn_scale_shift(params, buffers, "bn")
    y, _ = batch_norm2d(x, params["bn.weight"], params["bn.bias"], buffers["bn.running_mean"],
                        buffers["bn.running_var"], False)
    assert rel(x * scale[:, None, None] + shift[:, None, None], y) < 1e-14


@pytest.mark.parametrize("dtype", [F32, F64])
def test_vgg16_forward_matches_torch(dtype):
    spec = VGG()
    params, buffers = _random_params(spec, dtype, seed=3)
    x = np.random.default_rng(4).standard_normal((1, 3, 25, 25)).astype(dtype)
    f, _ = scratch.backbone_forward(spec, params, buffers, x, True)  # training changes nothing in VGG
    with torch.no_grad():
        ft = _torch(spec, params, buffers, False)(torch.from_numpy(x))
    fi = scratch.backbone_infer(spec, params, buffers, x)
    for k in ("low_level", "out"):
        for got in (f[k], fi[k]):
            assert got.dtype == dtype
            assert rel(got, ft[k].numpy()) <= (1e-5 if dtype == F32 else 1e-12)
    assert f["low_level"].shape == (1, 256, 7, 7) and f["out"].shape == (1, 1024, 4, 4)


# --------------------------------------------------------------------------- backward against autograd

def _backward_check(spec, x, training, seed, keys=("low_level", "out")):
    """dx and every parameter's gradient against torch autograd, float64."""
    params, buffers = _random_params(spec, F64, seed)
    m = _torch(spec, params, buffers, training)
    f, cache = scratch.backbone_forward(spec, params, buffers, x, training)
    rng = np.random.default_rng(seed + 1)
    d = {k: rng.standard_normal(f[k].shape) for k in keys}
    dx, grads = scratch.backbone_backward(spec, d, cache)

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    ft = m(xt)
    loss = sum((ft[k] * torch.from_numpy(d[k])).sum() for k in keys)
    loss.backward()
    assert dx.shape == x.shape and dx.dtype == F64
    assert rel(dx, xt.grad.numpy()) < 1e-10
    tgrads = {n: p.grad.numpy() for n, p in m.named_parameters()}
    assert list(grads) == list(params) == list(tgrads)
    for k, g in grads.items():
        assert g.shape == params[k].shape and g.dtype == F64
        assert rel(g, tgrads[k]) < 1e-10, k
    assert all(np.abs(g).max() > 0 for g in grads.values())  # every parameter took part
    return dx, grads


X33 = np.random.default_rng(10).standard_normal((2, 3, 33, 33))


@pytest.mark.parametrize("spec, training", [
    (ResNet("mini", 8, "torchvision"), True),
    (ResNet("mini", 8, "smp"), True),
    (ResNet("mini", 16, "torchvision", (1, 2, 4)), True),
    (ResNet("mini", 16, "smp", (1, 2, 4)), False),
    (ResNet("mini", 32), True),
    (ResNet(18, 8, "torchvision"), True),
    (ResNet(50, 16, "torchvision"), True),
], ids=lambda v: repr(v) if isinstance(v, ResNet) else ("train" if v else "eval"))
def test_backward_matches_autograd(spec, training):
    _backward_check(spec, X33, training, seed=5)


def test_backward_one_output_only():
    """DeepLab v3 uses only ``out``: a missing low_level gradient counts as zero."""
    spec = ResNet("mini", 16)
    dx, grads = _backward_check(spec, X33, True, seed=6, keys=("out",))
    params, buffers = _random_params(spec, F64, 6)
    f, cache = scratch.backbone_forward(spec, params, buffers, X33, True)
    d = np.random.default_rng(7).standard_normal(f["out"].shape)
    dx2, grads2 = scratch.backbone_backward(spec, {"out": d, "low_level": None}, cache)
    dx3, _ = scratch.backbone_backward(spec, {"out": d, "low_level": np.ones_like(f["low_level"])}, cache)
    assert np.array_equal(dx, dx2) and not np.allclose(dx, dx3)


def test_vgg_backward_matches_autograd():
    """A narrow VGG-LargeFOV on an input large enough (fc6 sees 13 x 14) that fc6's rate-12 taps read real
    pixels, not only padding."""
    x = np.random.default_rng(11).standard_normal((2, 3, 97, 105))
    dx, grads = _backward_check(VGG((4, 6, 8, 8, 8), 12), x, False, seed=8)
    assert np.abs(grads["fc6.weight"][:, :, 0, 0]).max() > 0  # a corner tap of the rate-12 kernel learnt


# --------------------------------------------------------------------------- torchvision weights

@pytest.mark.parametrize("depth, dilate, os_", [(50, [False, True, True], 8), (101, [False, False, True], 16)])
def test_loads_torchvision_resnet(depth, dilate, os_):
    """torchvision's dilated ResNet (DeepLab v3's backbone) loads strictly into the twin, which then gives
    identical layer4 features; the scratch backbone with the same weights agrees to float32 precision.
    The smp convention, same weights, gives different features: the test can tell them apart."""
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None, replace_stride_with_dilation=dilate).eval()
    with torch.no_grad():  # random but non-trivial BN statistics
        for mod in tv.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.uniform_(0.5, 1.5)
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    spec = ResNet(depth, os_, "torchvision")
    ours = ref.ResNetBackbone(spec)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    x = torch.from_numpy(np.random.default_rng(12).standard_normal((1, 3, 49, 49)).astype(F32))
    with torch.no_grad():
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        low = tv.layer1(h)
        out = tv.layer4(tv.layer3(tv.layer2(low)))
        f = ours(x)
    assert torch.equal(f["low_level"], low) and torch.equal(f["out"], out)
    assert out.shape[-1] == -(-49 // os_)
    if depth == 50:
        params, buffers = ref.params_from_torch(ours)
        fs, _ = scratch.backbone_forward(spec, params, buffers, x.numpy(), False)
        assert rel(fs["out"], out.numpy()) < 1e-5
        smp = ref.ResNetBackbone(ResNet(depth, os_, "smp"))
        smp.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert rel(smp.eval()(x)["out"].numpy(), out.numpy()) > 1e-2


def test_params_round_trip():
    spec = ResNet("mini", 16)
    params, buffers = _random_params(spec, F64, 9)
    m = ref.params_to_torch(ref.build_backbone(spec), params, buffers)
    assert next(m.parameters()).dtype == torch.float64
    p2, b2 = ref.params_from_torch(m)
    assert all(np.array_equal(params[k], p2[k]) for k in params) and all(np.array_equal(buffers[k], b2[k]) for k in buffers)
    p2["conv1.weight"][...] = 0
    assert params["conv1.weight"].any()  # copies, not views


# --------------------------------------------------------------------------- bad input

MINI = ResNet("mini", 8)
_P, _B = scratch.init_backbone(MINI, np.random.default_rng(0))
_X = np.zeros((1, 3, 16, 16), F32)
_, _CACHE = scratch.backbone_forward(MINI, _P, _B, _X, False)


def _fwd(**bad):
    a = dict(spec=MINI, params=_P, buffers=_B, x=_X, training=False) | bad
    return scratch.backbone_forward(**a)


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


BAD = [  # (function name, call, message regex)
    ("ResNet", lambda: ResNet(50, 4), "output_stride must be 8, 16 or 32, got 4"),
    ("ResNet", lambda: ResNet(50, 16.0), "output_stride must be 8, 16 or 32, got 16.0"),
    ("ResNet", lambda: ResNet(42), "depth must be one of 18, 34, 50, 101, 152 or 'mini', got 42"),
    ("ResNet", lambda: ResNet(50.0), "depth must be one of .* got 50.0"),
    ("ResNet", lambda: ResNet("tiny"), "depth must be one of .* got 'tiny'"),
    ("ResNet", lambda: ResNet(50, 8, "tf"), "dilation_convention must be 'torchvision' or 'smp', got 'tf'"),
    ("ResNet", lambda: ResNet(50, 8, multi_grid=(1, 2)),
     r"multi_grid must be None or 3 ints >= 1, one per block of layer4 \(depth 50\), got \(1, 2\)"),
    ("ResNet", lambda: ResNet(18, 8, multi_grid=(1, 2, 4)), r"multi_grid must be None or 2 ints .* got \(1, 2, 4\)"),
    ("ResNet", lambda: ResNet(50, 8, multi_grid=(1, 0, 2)), r"got \(1, 0, 2\)"),
    ("VGG", lambda: VGG((64, 128)), r"widths must be 5 ints >= 1 \(one per conv stage\), got \(64, 128\)"),
    ("VGG", lambda: VGG(fc6_rate=0), "fc6_rate must be an int >= 1, got 0"),
    ("init_backbone", lambda: scratch.init_backbone(MINI, 0), "rng must be a numpy.random.Generator .* got int"),
    ("init_backbone", lambda: scratch.init_backbone(MINI, np.random.default_rng(0), np.float16),
     "dtype must be float32 or float64, got float16"),
    ("init_backbone", lambda: scratch.init_backbone("resnet50", np.random.default_rng(0)), "spec must be a ResNet or a VGG or .*, got str"),
    ("backbone_forward", lambda: _fwd(x=np.zeros((1, 3, 7, 7), F32)),
     r"x has shape \(1, 3, 7, 7\), but ResNet\(depth='mini', output_stride=8.*\) needs H and W >= 8"),
    ("backbone_forward", lambda: _fwd(x=np.zeros((1, 3, 64, 31), F32), spec=ResNet("mini", 32), params=None),
     r"x has shape \(1, 3, 64, 31\), but .* needs H and W >= 32"),
    ("backbone_forward", lambda: _fwd(x=np.zeros((1, 3, 8, 8), F32), training=True),
     r"x has shape \(1, 3, 8, 8\), which gives a 1x1 last stage: training .* needs N \* H_out \* W_out >= 2"),
    ("backbone_forward", lambda: _fwd(x=np.zeros((1, 4, 16, 16), F32)), r"x has shape \(1, 4, 16, 16\), expected 3 channels"),
    ("backbone_forward", lambda: _fwd(x=np.zeros((3, 16, 16), F32)), r"x must be 4-D \(N, C, H, W\), got shape \(3, 16, 16\)"),
    ("backbone_forward", lambda: _fwd(x=np.zeros((1, 3, 16, 16), np.int64)), "x has dtype int64, expected float32 or float64"),
    ("backbone_forward", lambda: _fwd(training=1), "training must be True or False, got 1"),
    ("backbone_forward", lambda: _fwd(params=_without(_P, "layer4.2.conv3.weight")),
     r"params do not match ResNet\(depth='mini'.*\): missing 'layer4.2.conv3.weight'"),
    ("backbone_forward", lambda: _fwd(params=_P | {"fc.weight": np.zeros((10, 512), F32)}),
     "params do not match .*: unexpected 'fc.weight'"),
    ("backbone_forward", lambda: _fwd(buffers=_without(_B, "bn1.num_batches_tracked")),
     "buffers do not match .*: missing 'bn1.num_batches_tracked'"),
    ("backbone_forward", lambda: _fwd(params=_P | {"layer1.0.conv2.weight": np.zeros((16, 16, 1, 1), F32)}),
     r"params\['layer1.0.conv2.weight'\] has shape \(16, 16, 1, 1\), expected \(16, 16, 3, 3\)"),
    ("backbone_forward", lambda: _fwd(x=_X.astype(F64)),
     r"params\['conv1.weight'\] has dtype float32 but x has dtype float64"),
    ("backbone_forward", lambda: _fwd(buffers=_B | {"bn1.running_var": [1.0] * 16}),
     r"buffers\['bn1.running_var'\] must be a numpy array, got list"),
    ("backbone_forward", lambda: _fwd(spec=ResNet(18, 8)), r"params do not match ResNet\(depth=18"),
    ("backbone_backward", lambda: scratch.backbone_backward(MINI, {"out": np.zeros((1, 512, 3, 3), F32)}, _CACHE),
     r"d_features\['out'\] has shape \(1, 512, 3, 3\), expected \(1, 512, 2, 2\)"),
    ("backbone_backward", lambda: scratch.backbone_backward(MINI, {"out": np.zeros((1, 512, 2, 2))}, _CACHE),
     r"d_features\['out'\] has dtype float64 but the forward's x had float32"),
    ("backbone_backward", lambda: scratch.backbone_backward(MINI, {"logits": None}, _CACHE),
     "d_features has unexpected keys 'logits', expected 'low_level' and/or 'out'"),
    ("backbone_backward", lambda: scratch.backbone_backward(MINI, {}, (1, 2)),
     "cache must be the BackboneCache returned by backbone_forward, got tuple"),
    ("backbone_backward", lambda: scratch.backbone_backward(ResNet("mini", 16), {}, _CACHE),
     r"cache was made by backbone_forward with ResNet\(depth='mini', output_stride=8"),
]


@pytest.mark.parametrize("fn, call, message", [pytest.param(*b, id=f"{b[0]}-{i}") for i, b in enumerate(BAD)])
def test_bad_input(fn, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert str(info.value).startswith(fn + ":")  # the message names the function called


def test_params_to_torch_rejects_mixed_dtypes():
    params, buffers = scratch.init_backbone(MINI, np.random.default_rng(0))
    with pytest.raises(ValueError, match="params_to_torch: params and buffers must all be float32 or all float64"):
        ref.params_to_torch(ref.build_backbone(MINI), params, _f64(buffers))


def _unit_params(c=4, dtype=np.float32):
    params = {"conv.weight": np.ones((c, 3, 3, 3), dtype), "bn.weight": np.ones(c, dtype), "bn.bias": np.zeros(c, dtype),
              "fc.weight": np.ones((c, 3, 3, 3), dtype), "fc.bias": np.zeros(c, dtype)}
    return params, {"bn.running_mean": np.zeros(c, dtype), "bn.running_var": np.ones(c, dtype)}


@pytest.mark.parametrize("where, key, value, message", [
    ("params", "bn.weight", np.ones(1, np.float32), r"conv_bn_infer: bn.weight is \(1,\) float32, expected \(4,\) float32"),
    ("params", "bn.bias", np.ones(5, np.float32), r"conv_bn_infer: bn.bias is \(5,\) float32, expected \(4,\)"),
    ("buffers", "bn.running_var", np.ones(4), r"conv_bn_infer: bn.running_var is \(4,\) float64, expected \(4,\) float32"),
    ("params", "fc.bias", np.ones(1, np.float32), r"conv_relu_infer: fc.bias is \(1,\) float32, expected \(4,\)"),
])
def test_eval_units_name_the_bad_per_channel_array(where, key, value, message):
    """The eval units fold BN into a scale and shift: a wrong per-channel array is refused by its own name
    (it would broadcast silently, or fail as 'scale')."""
    params, buffers = _unit_params()
    (params if where == "params" else buffers)[key] = value
    x = np.ones((1, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=message):
        if key.startswith("fc"):
            units.conv_relu_infer(x, params, "fc", 1)
        else:
            units.conv_bn_infer(x, params, buffers, "conv", "bn", 1, 1)

