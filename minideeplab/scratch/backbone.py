"""Dilated backbones from scratch, forward and backward: ResNet (torchvision layout) and VGG-16
DeepLab-LargeFOV, in NumPy on top of ``atrous`` and ``layers``.

DeepLab keeps the feature maps large by trading the stride of the last stages for dilation: a stage
that would halve the resolution runs at stride 1 instead, and every later 3x3 conv samples its input
``rate`` pixels apart, so the receptive field grows as if the stride were still there. The output
stride (input size / feature size) drops from 32 to 16 or 8.

No module framework and no autodiff tape: parameters are two flat dicts keyed by torchvision's
``state_dict`` names, so real weights load by name::

    params   conv weights (and VGG conv biases), BN weight (gamma) and bias (beta)
    buffers  BN running_mean, running_var (float) and num_batches_tracked (0-D int64), as torch

and every piece is a pair of functions, CS231n style: ``*_forward(x, ...) -> (y, cache)`` and
``*_backward(dy, cache) -> (dx, grads)``, ``grads`` keyed like ``params``.

* ``ResNet``, ``VGG``: frozen specs; the per-block stride and dilation are computed once, from the
  output stride and the dilation convention (see ``ResNet``).
* ``init_backbone(spec, rng) -> (params, buffers)``: Kaiming normal convs (as torchvision), BN 1 / 0.
* ``backbone_forward(spec, params, buffers, x, training) -> (features, cache)``: ``features`` holds
  ``low_level`` (the stride-4 features the DeepLab v3+ decoder uses) and ``out`` (the last stage).
* ``backbone_backward(spec, d_features, cache) -> (dx, grads)``.
* ``backbone_infer(spec, params, buffers, x) -> features``: eval only, and lean: keeps no caches, folds
  each eval batch norm (and ReLU, and a block's residual sum) into one in-place pass after its conv
  (``atrous.conv2d_fused``), max pools without recording the argmax. ``features`` also holds ``layer3``
  (ResNet), the aux head's input. The same numbers as ``backbone_forward(..., training=False)``, up to
  float rounding.

Arrays are NCHW, float32 or float64; every output has the dtype of the input. The PyTorch twin is
``minideeplab.reference.backbone``: the same specs build ``nn.Module``s whose ``state_dict`` keys are
these dicts' keys.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minideeplab.scratch.layers import (MaxPoolCache, max_pool2d, max_pool2d_backward, max_pool2d_infer, relu,
                                        relu_backward)
from minideeplab.scratch.params import check_subset, init_params
from minideeplab.scratch.units import (ConvBNCache, ConvReLUCache, conv_bn_backward, conv_bn_forward, conv_bn_infer,
                                       conv_relu_backward, conv_relu_forward, conv_relu_infer)
from minideeplab.specs.backbone import VGG, BlockPlan, ResNet, VGGLayer, check_backbone_spec
from minideeplab.specs.checks import check_float_array, names

__all__ = ["BlockPlan", "ResNet", "VGGLayer", "VGG", "parameter_shapes", "init_backbone", "check_params", "check_image",
           "stem_forward", "stem_backward", "basic_block_forward", "basic_block_backward", "bottleneck_forward",
           "bottleneck_backward", "BackboneCache", "backbone_forward", "backbone_backward", "stem_infer", "block_infer",
           "backbone_infer"]


# ---------------------------------------------------------------------------------------------
# parameters


def parameter_shapes(spec) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in torchvision's state_dict order. num_batches_tracked is ()."""
    check_backbone_spec("parameter_shapes", spec)
    params, buffers = {}, {}

    def conv(name, cout, cin, k, bias=False):
        params[f"{name}.weight"] = (cout, cin, k, k)
        if bias:
            params[f"{name}.bias"] = (cout,)

    def bn(name, c):
        params[f"{name}.weight"], params[f"{name}.bias"] = (c,), (c,)
        buffers.update({f"{name}.running_mean": (c,), f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

    if isinstance(spec, VGG):
        for layer in spec.layers:
            if layer.kind == "conv":
                conv(layer.name, layer.out_channels, layer.in_channels, layer.kernel, bias=True)
        return params, buffers
    conv("conv1", spec.stem_width, 3, 7)
    bn("bn1", spec.stem_width)
    for i, stage in enumerate(spec.stages, start=1):
        for j, b in enumerate(stage):
            p = f"layer{i}.{j}"
            if spec.block == "bottleneck":
                conv(f"{p}.conv1", b.width, b.in_channels, 1)
                bn(f"{p}.bn1", b.width)
                conv(f"{p}.conv2", b.width, b.width, 3)
                bn(f"{p}.bn2", b.width)
                conv(f"{p}.conv3", b.out_channels, b.width, 1)
                bn(f"{p}.bn3", b.out_channels)
            else:
                conv(f"{p}.conv1", b.width, b.in_channels, 3)
                bn(f"{p}.bn1", b.width)
                conv(f"{p}.conv2", b.width, b.width, 3)
                bn(f"{p}.bn2", b.width)
            if b.downsample:
                conv(f"{p}.downsample.0", b.out_channels, b.in_channels, 1)
                bn(f"{p}.downsample.1", b.out_channels)
    return params, buffers


def init_backbone(spec, rng, dtype=np.float32) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fresh (params, buffers), as torchvision initialises: conv weights Kaiming normal, fan-out mode,
    std sqrt(2 / (Cout * kh * kw)); conv biases 0; BN weight 1, bias 0; running mean 0, var 1."""
    fn = "init_backbone"
    check_backbone_spec(fn, spec)
    return init_params(*parameter_shapes(spec), rng, dtype, fn)


def check_params(spec, params, buffers, dtype, fn="check_params"):
    """params and buffers must hold exactly the spec's keys, with its shapes, floats of ``dtype``
    (num_batches_tracked: an integer 0-D array). Raises ValueError naming what does not match."""
    check_backbone_spec(fn, spec)
    check_subset(fn, repr(spec), *parameter_shapes(spec), params, buffers, dtype)


# ---------------------------------------------------------------------------------------------
# conv + BN, the unit of every ResNet block


# A ReLU's output is positive exactly where its input is, so its backward can take the mask from the
# output: relu_backward(dy, y) == relu_backward(dy, x). The caches keep the outputs (which the next conv
# keeps anyway as its input) instead of a second copy of every pre-activation.


# ---------------------------------------------------------------------------------------------
# ResNet pieces


class StemCache(NamedTuple):
    conv_bn: ConvBNCache
    h: np.ndarray      # ReLU output, the max pool's input
    pool: MaxPoolCache


def stem_forward(x, params, buffers, training):
    """conv1 7x7 stride 2 -> bn1 -> ReLU -> max pool 3x3 stride 2 padding 1: stride 4.
    x (N, 3, H, W) -> (y (N, stem, ceil(H/4), ceil(W/4)), StemCache)."""
    h, c = conv_bn_forward(x, params, buffers, "conv1", "bn1", 2, 1, training)
    h = relu(h)
    y, pool = max_pool2d(h, 3, 2, 1)
    return y, StemCache(c, h, pool)


def stem_backward(dy, cache):
    dh = relu_backward(max_pool2d_backward(dy, cache.pool), cache.h)
    return conv_bn_backward(dh, cache.conv_bn)


class BlockCache(NamedTuple):
    convs: tuple       # ConvBNCache of the main branch, in order
    shortcut: ConvBNCache | None  # the downsample's, or None (identity)
    y: np.ndarray      # the block's output (ReLU of the sum)


def _shortcut_forward(x, params, buffers, prefix, plan, training):
    if not plan.downsample:
        return x, None
    return conv_bn_forward(x, params, buffers, f"{prefix}.downsample.0", f"{prefix}.downsample.1",
                           plan.stride, 1, training)


def basic_block_forward(x, params, buffers, prefix, plan, training):
    """y = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x)), both convs 3x3 with ``plan.dilation``,
    conv1 with ``plan.stride``. x (N, Cin, H, W) -> (y (N, width, H/stride, W/stride), BlockCache).
    ``prefix``: the block's name, e.g. "layer3.1"."""
    def unit(h, k, stride, dilation):  # conv{k} then bn{k}
        return conv_bn_forward(h, params, buffers, f"{prefix}.conv{k}", f"{prefix}.bn{k}", stride, dilation, training)

    h, c1 = unit(x, 1, plan.stride, plan.dilation)
    h, c2 = unit(relu(h), 2, 1, plan.dilation)
    s, cs = _shortcut_forward(x, params, buffers, prefix, plan, training)
    y = relu(h + s)
    return y, BlockCache((c1, c2), cs, y)


def bottleneck_forward(x, params, buffers, prefix, plan, training):
    """y = ReLU(bn3(conv3(ReLU(bn2(conv2(ReLU(bn1(conv1(x))))))) + shortcut(x)): conv1 1x1 to the width,
    conv2 3x3 with ``plan.stride`` and ``plan.dilation``, conv3 1x1 to width * 4.
    x (N, Cin, H, W) -> (y (N, 4 * width, H/stride, W/stride), BlockCache)."""
    def unit(h, k, stride, dilation):  # conv{k} then bn{k}
        return conv_bn_forward(h, params, buffers, f"{prefix}.conv{k}", f"{prefix}.bn{k}", stride, dilation, training)

    h, c1 = unit(x, 1, 1, 1)
    h, c2 = unit(relu(h), 2, plan.stride, plan.dilation)
    h, c3 = unit(relu(h), 3, 1, 1)
    s, cs = _shortcut_forward(x, params, buffers, prefix, plan, training)
    y = relu(h + s)
    return y, BlockCache((c1, c2, c3), cs, y)


def _block_backward(dy, cache):
    """Either block: back through the final ReLU, then the sum sends the same gradient down the main
    branch (conv-BN units separated by ReLUs) and the shortcut; dx adds the two."""
    grads = {}
    ds = relu_backward(dy, cache.y)
    d = ds
    for c in reversed(cache.convs):
        d, g = conv_bn_backward(d, c)
        grads.update(g)
        if c is not cache.convs[0]:  # a ReLU made this unit's input: its output is c.x
            d = relu_backward(d, c.x)
    if cache.shortcut is None:
        return d + ds, grads
    dxs, g = conv_bn_backward(ds, cache.shortcut)
    grads.update(g)
    return d + dxs, grads


def basic_block_backward(dy, cache):
    """dy (N, width, Ho, Wo) -> (dx (N, Cin, H, W), grads of the block's parameters)."""
    return _block_backward(dy, cache)


def bottleneck_backward(dy, cache):
    """dy (N, 4 * width, Ho, Wo) -> (dx (N, Cin, H, W), grads of the block's parameters)."""
    return _block_backward(dy, cache)


# ---------------------------------------------------------------------------------------------
# VGG pieces


# ---------------------------------------------------------------------------------------------
# whole backbones


class BackboneCache(NamedTuple):
    """What ``backbone_backward`` needs: the spec and the caches of every step in forward order."""

    spec: ResNet | VGG
    steps: list        # (name, cache); ResNet: ("stem", StemCache), ("layer1.0", BlockCache), ...
                       # VGG: (layer name, ConvReLUCache or MaxPoolCache)
    taps: dict         # feature name -> the step whose output it is ("low_level", "out"; ResNet: "layer3")
    shapes: dict       # "x", "low_level", "out" -> shape
    dtype: np.dtype


def check_image(fn, x, training, output_stride, what):
    """x must be a float (N, 3, H, W) array with H, W >= output_stride; training a bool. -> x.shape"""
    check_float_array(fn, "x", x, 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    if C != 3:
        raise ValueError(f"{fn}: x has shape {x.shape}, expected 3 channels (N, 3, H, W)")
    if not isinstance(training, (bool, np.bool_)):
        raise ValueError(f"{fn}: training must be True or False, got {training!r}")
    if H < output_stride or W < output_stride:
        raise ValueError(f"{fn}: x has shape {x.shape}, but {what} needs H and W >= {output_stride} "
                         f"(its output stride)")
    return N, C, H, W


def backbone_forward(spec, params, buffers, x, training):
    """x (N, 3, H, W) -> (features, BackboneCache), features = {"low_level": stride-4 features,
    "out": the last stage's; ResNet: "layer3" too, the aux head's input}. ResNet: low_level = layer1 (N, 64 * expansion, ceil(H/4), ceil(W/4)) for
    full widths, out = layer4 (N, 512 * expansion, ceil(H/os), ceil(W/os)). VGG: ReLU(conv3_3), ReLU(fc7).

    training: BN uses batch statistics and updates ``buffers`` in place (ResNet); eval uses the running
    ones. VGG has no BN and no dropout here: training changes nothing (its buffers are {}).
    H and W must be at least the output stride (smaller inputs would give a last stage that sees less
    than one of its output cells); training needs more than one value per channel in ``out``.
    """
    fn = "backbone_forward"
    check_backbone_spec(fn, spec)
    N, C, H, W = check_image(fn, x, training, spec.output_stride, repr(spec))
    os_ = spec.output_stride
    out_hw = (-(-H // os_), -(-W // os_))
    if training and isinstance(spec, ResNet) and N * out_hw[0] * out_hw[1] < 2:
        raise ValueError(f"{fn}: x has shape {x.shape}, which gives a {out_hw[0]}x{out_hw[1]} last stage: "
                         f"training (batch norm) needs N * H_out * W_out >= 2")
    check_params(spec, params, buffers, x.dtype, fn)
    training = bool(training)

    steps = []
    if isinstance(spec, VGG):
        h, low = x, None
        for layer in spec.layers:
            if layer.kind == "conv":
                h, c = conv_relu_forward(h, params, layer.name, layer.dilation)
            else:
                h, c = max_pool2d(h, layer.kernel, layer.stride, 1)
            steps.append((layer.name, c))
            if layer.name == spec.low_level_layer:
                low = h
    else:
        h, c = stem_forward(x, params, buffers, training)
        steps.append(("stem", c))
        block_forward = bottleneck_forward if spec.block == "bottleneck" else basic_block_forward
        for i, stage in enumerate(spec.stages, start=1):
            for j, plan in enumerate(stage):
                h, c = block_forward(h, params, buffers, f"layer{i}.{j}", plan, training)
                steps.append((f"layer{i}.{j}", c))
            if i == 1:
                low = h
            if i == 3:
                layer3 = h
    features = {"low_level": low, "out": h} if isinstance(spec, VGG) else {"low_level": low, "layer3": layer3, "out": h}
    taps = {k: _tap_step(spec, k) for k in features}
    shapes = {"x": x.shape} | {k: v.shape for k, v in features.items()}
    return features, BackboneCache(spec, steps, taps, shapes, x.dtype)


def _tap_step(spec, feature) -> str:
    """The step whose output is ``feature``."""
    if feature == "out":
        return spec.layers[-1].name if isinstance(spec, VGG) else f"layer4.{len(spec.stages[3]) - 1}"
    if isinstance(spec, VGG):
        return spec.low_level_layer
    stage = {"low_level": 1, "layer3": 3}[feature]
    return f"layer{stage}.{len(spec.stages[stage - 1]) - 1}"


def backbone_backward(spec, d_features, cache):
    """d_features {"low_level": dL/dlow_level, "out": dL/dout, ResNet: "layer3": dL/dlayer3} (any may be left
    out or None: zero)
    -> (dx (N, 3, H, W), grads), grads keyed and ordered like params."""
    fn = "backbone_backward"
    check_backbone_spec(fn, spec)
    if not isinstance(cache, BackboneCache):
        raise ValueError(f"{fn}: cache must be the BackboneCache returned by backbone_forward, "
                         f"got {type(cache).__name__}")
    if cache.spec != spec:
        raise ValueError(f"{fn}: cache was made by backbone_forward with {cache.spec!r}, not {spec!r}")
    if not isinstance(d_features, dict):
        raise ValueError(f"{fn}: d_features must be a dict with 'low_level' and/or 'out', "
                         f"got {type(d_features).__name__}")
    unknown = [k for k in d_features if k not in cache.taps]
    if unknown:
        raise ValueError(f"{fn}: d_features has unexpected keys {names(unknown)}, expected 'low_level' and/or 'out'"
                         + (", or 'layer3'" if "layer3" in cache.taps else ""))
    d = {}
    for key in cache.taps:
        g = d_features.get(key)
        if g is None:  # no gradient: zero (only "out" needs an array to start from)
            if key == "out":
                d[key] = np.zeros(cache.shapes[key], dtype=cache.dtype)
            continue
        check_float_array(fn, f"d_features[{key!r}]", g)
        if g.dtype != cache.dtype:
            raise ValueError(f"{fn}: d_features[{key!r}] has dtype {g.dtype} but the forward's x had {cache.dtype}")
        if g.shape != cache.shapes[key]:
            raise ValueError(f"{fn}: d_features[{key!r}] has shape {g.shape}, expected {cache.shapes[key]} "
                             f"(the forward's {key})")
        d[key] = g

    grads = {}
    joins = {cache.taps[key]: key for key in d if key != "out"}
    dh = d["out"]
    for name, c in reversed(cache.steps):
        if name in joins:  # a feature is this step's output: its gradient joins here
            dh = dh + d[joins[name]]
        if isinstance(c, MaxPoolCache):
            dh = max_pool2d_backward(dh, c)
            continue
        if isinstance(c, ConvReLUCache):
            dh, g = conv_relu_backward(dh, c)
        elif isinstance(c, StemCache):
            dh, g = stem_backward(dh, c)
        else:
            dh, g = _block_backward(dh, c)
        grads.update(g)
    order = parameter_shapes(spec)[0]
    return dh, {k: grads[k] for k in order}


# ---------------------------------------------------------------------------------------------
# eval without caches: conv, then batch norm, residual and ReLU in one in-place pass


def stem_infer(x, params, buffers):
    """Eval ``stem_forward`` without a cache: conv1 -> bn1 -> ReLU (one pass) -> max pool (no argmax)."""
    return max_pool2d_infer(conv_bn_infer(x, params, buffers, "conv1", "bn1", 2, 1), 3, 2, 1)


def block_infer(spec, x, params, buffers, prefix, plan):
    """Eval ``bottleneck_forward`` / ``basic_block_forward`` (as ``spec.block``) without a cache; the
    last conv's pass adds the shortcut and applies the ReLU."""
    s = x if not plan.downsample else conv_bn_infer(x, params, buffers, f"{prefix}.downsample.0",
                                                    f"{prefix}.downsample.1", plan.stride, 1, relu=False)
    if spec.block == "bottleneck":
        units = ((1, 1, 1), (2, plan.stride, plan.dilation), (3, 1, 1))
    else:
        units = ((1, plan.stride, plan.dilation), (2, 1, plan.dilation))
    h = x
    for k, stride, dilation in units:
        last = k == len(units)
        h = conv_bn_infer(h, params, buffers, f"{prefix}.conv{k}", f"{prefix}.bn{k}", stride, dilation,
                          residual=s if last else None)
    return h


def backbone_infer(spec, params, buffers, x):
    """Eval ``backbone_forward`` without caches: x (N, 3, H, W) -> features {"low_level", "out"} (and
    "layer3", ResNet only: the last layer3 block's output, the aux head's input)."""
    fn = "backbone_infer"
    check_backbone_spec(fn, spec)
    check_image(fn, x, False, spec.output_stride, repr(spec))
    check_params(spec, params, buffers, x.dtype, fn)
    features = {}
    if isinstance(spec, VGG):
        h = x
        for layer in spec.layers:
            if layer.kind == "conv":
                h = conv_relu_infer(h, params, layer.name, layer.dilation)
            else:
                h = max_pool2d_infer(h, layer.kernel, layer.stride, 1)
            if layer.name == spec.low_level_layer:
                features["low_level"] = h
        features["out"] = h
        return features
    h = stem_infer(x, params, buffers)
    for i, stage in enumerate(spec.stages, start=1):
        for j, plan in enumerate(stage):
            h = block_infer(spec, h, params, buffers, f"layer{i}.{j}", plan)
        if i == 1:
            features["low_level"] = h
        if i == 3:
            features["layer3"] = h
    features["out"] = h
    return features
