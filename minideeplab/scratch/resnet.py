"""ResNet from scratch, forward and backward (torchvision's layout and names, dilated as the spec says):
the stem (conv1 7x7 stride 2, bn1, ReLU, max pool), then layer1..layer4 of basic blocks or bottlenecks.
``forward`` returns the features DeepLab's heads read: ``low_level`` (layer1, stride 4), ``layer3`` (the aux
head's input) and ``out`` (layer4). ``minideeplab.scratch.backbone`` runs it through its registry; the twin is
``minideeplab.reference.backbone.ResNetBackbone``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minideeplab.scratch.layers import (MaxPoolCache, max_pool2d, max_pool2d_backward, max_pool2d_infer, relu,
                                        relu_backward)
from minideeplab.scratch.params import bn_shapes
from minideeplab.scratch.units import ConvBNCache, conv_bn_backward, conv_bn_forward, conv_bn_infer
from minideeplab.specs.backbone import ResNet

__all__ = ["parameter_shapes", "StemCache", "stem_forward", "stem_backward", "stem_infer", "BlockCache",
           "basic_block_forward", "basic_block_backward", "bottleneck_forward", "bottleneck_backward", "block_infer",
           "forward", "step_backward", "infer"]


def parameter_shapes(spec: ResNet) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in torchvision's state_dict order. num_batches_tracked is ()."""
    params, buffers = {}, {}

    def conv(name, cout, cin, k):
        params[f"{name}.weight"] = (cout, cin, k, k)

    def bn(name, c):
        bn_shapes(params, buffers, name, c)

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


# A ReLU's output is positive exactly where its input is, so its backward can take the mask from the
# output: relu_backward(dy, y) == relu_backward(dy, x). The caches keep the outputs (which the next conv
# keeps anyway as its input) instead of a second copy of every pre-activation.


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
# the whole ResNet


def _last(spec, stage) -> str:
    return f"layer{stage}.{len(spec.stages[stage - 1]) - 1}"


def forward(spec: ResNet, params, buffers, x, training):
    """x (N, 3, H, W) -> (features, steps, taps): features {"low_level": layer1 (N, 64 * expansion, ceil(H/4),
    ceil(W/4)) at full width, "layer3", "out": layer4 (N, 512 * expansion, ceil(H/os), ceil(W/os))}; steps the
    (name, cache) of the stem and every block in order; taps {feature: the step whose output it is}."""
    steps = []
    h, c = stem_forward(x, params, buffers, training)
    steps.append(("stem", c))
    block_forward = bottleneck_forward if spec.block == "bottleneck" else basic_block_forward
    features = {}
    for i, stage in enumerate(spec.stages, start=1):
        for j, plan in enumerate(stage):
            h, c = block_forward(h, params, buffers, f"layer{i}.{j}", plan, training)
            steps.append((f"layer{i}.{j}", c))
        if i in (1, 3):
            features["low_level" if i == 1 else "layer3"] = h
    features["out"] = h
    return features, steps, {"low_level": _last(spec, 1), "layer3": _last(spec, 3), "out": _last(spec, 4)}


def step_backward(dy, cache):
    """One step of ``forward`` backwards: the stem or a block."""
    return stem_backward(dy, cache) if isinstance(cache, StemCache) else _block_backward(dy, cache)


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


def infer(spec: ResNet, params, buffers, x):
    """Eval ``forward`` without caches: x -> features {"low_level", "layer3", "out"}."""
    features = {}
    h = stem_infer(x, params, buffers)
    for i, stage in enumerate(spec.stages, start=1):
        for j, plan in enumerate(stage):
            h = block_infer(spec, h, params, buffers, f"layer{i}.{j}", plan)
        if i in (1, 3):
            features["low_level" if i == 1 else "layer3"] = h
    features["out"] = h
    return features
