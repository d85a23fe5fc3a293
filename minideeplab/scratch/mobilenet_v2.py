"""MobileNetV2 from scratch, forward and backward (torchvision's layout and names, dilated as smp's
``mobilenet_v2`` encoder; see ``minideeplab.specs.mobilenet_v2``): ``features.0`` (3x3 conv stride 2 + BN +
ReLU6), 17 inverted residuals (1x1 expansion + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 linear projection
+ BN, + the input where shapes allow), ``features.18`` (1x1 conv + BN + ReLU6).

``forward`` returns ``low_level`` (features.3, 24 channels, stride 4) and ``out`` (features.18, 1280
channels). ``minideeplab.scratch.backbone`` runs it through its registry; the twin is
``minideeplab.reference.mobilenet_v2.MobileNetV2Backbone``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minideeplab.scratch.layers import relu6, relu6_backward
from minideeplab.scratch.params import bn_shapes
from minideeplab.scratch.units import ConvBNCache, conv_bn_backward, conv_bn_forward, conv_bn_infer
from minideeplab.specs.mobilenet_v2 import InvertedResidualPlan, MobileNetV2

__all__ = ["parameter_shapes", "conv_names", "ConvUnitCache", "BlockCache", "block_forward",
           "block_backward", "block_infer", "forward", "step_backward", "infer"]

def conv_names(prefix, plan: InvertedResidualPlan) -> list[tuple[str, str, bool]]:
    """(conv, BN, ReLU6 after) of a block's convs in order, torchvision's names below ``prefix``."""
    units = [(f"{prefix}.conv.0.0", f"{prefix}.conv.0.1", True)] if plan.expand else []
    k = len(units)
    return units + [(f"{prefix}.conv.{k}.0", f"{prefix}.conv.{k}.1", True),
                    (f"{prefix}.conv.{k + 1}", f"{prefix}.conv.{k + 2}", False)]


def parameter_shapes(spec: MobileNetV2) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in torchvision's state_dict order (less its classifier)."""
    params, buffers = {}, {}

    def conv_bn(conv, bn, shape):
        params[f"{conv}.weight"] = shape
        bn_shapes(params, buffers, bn, shape[0])

    conv_bn("features.0.0", "features.0.1", (spec.blocks[0].in_channels, 3, 3, 3))
    for i, b in enumerate(spec.blocks, start=1):
        shapes = ([(b.hidden, b.in_channels, 1, 1)] if b.expand else []) + [(b.hidden, 1, 3, 3),
                                                                           (b.out_channels, b.hidden, 1, 1)]
        for (conv, bn, _), shape in zip(conv_names(f"features.{i}", b), shapes):
            conv_bn(conv, bn, shape)
    conv_bn("features.18.0", "features.18.1", (spec.out_channels, spec.blocks[-1].out_channels, 1, 1))
    return params, buffers


class ConvUnitCache(NamedTuple):
    conv_bn: ConvBNCache
    y: np.ndarray | None   # the ReLU6's output, None for a linear unit


class BlockCache(NamedTuple):
    units: list            # ConvUnitCache of each conv in order
    residual: bool


def _unit_forward(x, params, buffers, conv, bn, act, stride, dilation, training, groups=1):
    h, c = conv_bn_forward(x, params, buffers, conv, bn, stride, dilation, training, groups=groups)
    y = relu6(h) if act else h
    return y, ConvUnitCache(c, y if act else None)


def _unit_backward(dy, cache):
    if cache.y is not None:
        dy = relu6_backward(dy, cache.y)  # 0 < output < 6 exactly where 0 < input < 6
    return conv_bn_backward(dy, cache.conv_bn)


def block_forward(x, params, buffers, prefix, plan: InvertedResidualPlan, training):
    """One inverted residual: x (N, Cin, H, W) -> (y (N, Cout, ceil(H / stride), ceil(W / stride)), BlockCache)."""
    units, h = [], x
    for conv, bn, act in conv_names(prefix, plan):
        depthwise = params[f"{conv}.weight"].shape[2] == 3
        h, c = _unit_forward(h, params, buffers, conv, bn, act, plan.stride if depthwise else 1,
                             plan.dilation if depthwise else 1, training, h.shape[1] if depthwise else 1)
        units.append(c)
    return (h + x if plan.residual else h), BlockCache(units, plan.residual)


def block_backward(dy, cache):
    """dy (N, Cout, Ho, Wo) -> (dx (N, Cin, H, W), grads of the block's parameters)."""
    grads, dh = {}, dy
    for c in reversed(cache.units):
        dh, g = _unit_backward(dh, c)
        grads.update(g)
    return (dh + dy if cache.residual else dh), grads


def block_infer(x, params, buffers, prefix, plan: InvertedResidualPlan):
    """Eval ``block_forward`` without a cache: each BN (and the residual sum) folded into its conv's pass."""
    h = x
    for conv, bn, act in conv_names(prefix, plan):
        depthwise = params[f"{conv}.weight"].shape[2] == 3
        h = conv_bn_infer(h, params, buffers, conv, bn, plan.stride if depthwise else 1,
                          plan.dilation if depthwise else 1, relu=act,
                          residual=x if plan.residual and not act else None, groups=h.shape[1] if depthwise else 1)
        if act:
            np.minimum(h, h.dtype.type(6), out=h)  # ReLU6: the fused pass did the max(., 0)
    return h


def forward(spec: MobileNetV2, params, buffers, x, training):
    """x (N, 3, H, W) -> (features {"low_level": features.3 (N, 24, ceil(H/4), ceil(W/4)), "out": features.18
    (N, 1280, ceil(H/os), ceil(W/os))}, steps [(name, cache)], taps)."""
    h, c = _unit_forward(x, params, buffers, "features.0.0", "features.0.1", True, 2, 1, training)
    steps, features = [("features.0", c)], {}
    for i, plan in enumerate(spec.blocks, start=1):
        h, c = block_forward(h, params, buffers, f"features.{i}", plan, training)
        steps.append((f"features.{i}", c))
        if f"features.{i}" == spec.low_level_layer:
            features["low_level"] = h
    h, c = _unit_forward(h, params, buffers, "features.18.0", "features.18.1", True, 1, 1, training)
    steps.append(("features.18", c))
    features["out"] = h
    return features, steps, {"low_level": spec.low_level_layer, "out": "features.18"}


def step_backward(dy, cache):
    """One step of ``forward`` backwards: a conv unit (features.0, features.18) or a block."""
    return _unit_backward(dy, cache) if isinstance(cache, ConvUnitCache) else block_backward(dy, cache)


def infer(spec: MobileNetV2, params, buffers, x):
    """Eval ``forward`` without caches: x -> features {"low_level", "out"}."""
    h = conv_bn_infer(x, params, buffers, "features.0.0", "features.0.1", 2, 1)
    np.minimum(h, h.dtype.type(6), out=h)
    features = {}
    for i, plan in enumerate(spec.blocks, start=1):
        h = block_infer(h, params, buffers, f"features.{i}", plan)
        if f"features.{i}" == spec.low_level_layer:
            features["low_level"] = h
    h = conv_bn_infer(h, params, buffers, "features.18.0", "features.18.1", 1, 1)
    features["out"] = np.minimum(h, h.dtype.type(6), out=h)
    return features
