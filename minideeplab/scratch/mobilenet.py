"""MobileNetV3-Large from scratch, forward and backward (torchvision's layout and names, dilated as the spec
says; see ``minideeplab.specs.mobilenet``): the stem, fifteen inverted residual blocks, the last 1x1 conv.
``forward`` returns the features the heads read: ``low_level`` (features[3], stride 4), ``low`` (features[4],
stride 8: LR-ASPP's low branch, DeepLabV3's aux head) and ``out`` (features[16]). ``minideeplab.scratch.backbone``
runs it through its registry; the twin is ``minideeplab.reference.mobilenet.MobileNetV3Backbone``.

Every conv is followed by batch norm (eps 0.001, momentum 0.01, torchvision's) and, except a block's
``project``, an activation (ReLU or hardswish): one ``conv_bn_act`` unit, ``units.conv_bn_*`` then the
activation. The depthwise k x k conv is ``atrous_conv2d(..., groups=C)`` (numba's depthwise kernel).
Squeeze-and-excitation (``se``) scales each channel by hardsigmoid(fc2(ReLU(fc1(mean over H, W)))); fc1
and fc2 are 1x1 convs with bias on a 1 x 1 map, computed here as matrix products.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from minideeplab.scratch.layers import (hardsigmoid, hardsigmoid_backward, hardswish, hardswish_backward, relu,
                                        relu_backward)
from minideeplab.scratch.params import bn_shapes
from minideeplab.scratch.units import ConvBNCache, conv_bn_backward, conv_bn_forward, conv_bn_infer
from minideeplab.specs.mobilenet import MOBILENET_BN_EPS, MOBILENET_BN_MOMENTUM, InvertedResidualPlan, MobileNetV3

__all__ = ["parameter_shapes", "ConvBNActCache", "conv_bn_act_forward", "conv_bn_act_backward", "conv_bn_act_infer",
           "SECache", "se_forward", "se_backward", "se_infer", "BlockCache", "block_forward", "block_backward",
           "block_infer", "forward", "step_backward", "infer"]

_ACTS = {"relu": (relu, relu_backward), "hardswish": (hardswish, hardswish_backward)}


def parameter_shapes(spec: MobileNetV3) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in torchvision's state_dict order. num_batches_tracked is ()."""
    params, buffers = {}, {}

    def unit(name, cout, cin_per_group, k):
        params[f"{name}.0.weight"] = (cout, cin_per_group, k, k)
        bn_shapes(params, buffers, f"{name}.1", cout)

    unit("0", spec.stem_width, 3, 3)
    for i, b in enumerate(spec.blocks, start=1):
        for j, part in enumerate(b.parts):
            p = f"{i}.block.{j}"
            if part == "expand":
                unit(p, b.expanded, b.in_channels, 1)
            elif part == "depthwise":
                unit(p, b.expanded, 1, b.kernel)
            elif part == "se":
                params[f"{p}.fc1.weight"], params[f"{p}.fc1.bias"] = (b.squeeze, b.expanded, 1, 1), (b.squeeze,)
                params[f"{p}.fc2.weight"], params[f"{p}.fc2.bias"] = (b.expanded, b.squeeze, 1, 1), (b.expanded,)
            else:
                unit(p, b.out_channels, b.expanded, 1)
    unit(str(len(spec.blocks) + 1), spec.last_channels, spec.blocks[-1].out_channels, 1)
    return params, buffers


# ---------------------------------------------------------------------------------------------
# conv + BN + activation (torchvision's Conv2dNormActivation: ``.0`` conv, ``.1`` BN)


class ConvBNActCache(NamedTuple):
    conv_bn: ConvBNCache   # the conv + BN unit's (``units.conv_bn_forward``)
    act: str | None        # "relu", "hardswish" or None
    h: np.ndarray | None   # the activation's input (BN output); None without an activation


def conv_bn_act_forward(x, params, buffers, name, stride, dilation, groups, act, training):
    """act(BN(conv(x))): ``units.conv_bn_forward`` with conv ``name.0`` (no bias, "same" padding
    dilation * (k - 1) / 2, ``groups``) and BN ``name.1`` (eps 0.001, momentum 0.01), then act "relu",
    "hardswish" or None. x (N, C, H, W) -> (y (N, Cout, ceil(H / stride), ceil(W / stride)), ConvBNActCache).
    Training updates the BN's running statistics in ``buffers`` in place."""
    h, c = conv_bn_forward(x, params, buffers, f"{name}.0", f"{name}.1", stride, dilation, training,
                           MOBILENET_BN_EPS, groups, MOBILENET_BN_MOMENTUM)
    y = h if act is None else _ACTS[act][0](h)
    return y, ConvBNActCache(c, act, None if act is None else h)


def conv_bn_act_backward(dy, cache):
    """dy (N, Cout, Ho, Wo) -> (dx, {name.0.weight, name.1.weight, name.1.bias})."""
    if cache.act is not None:
        dy = _ACTS[cache.act][1](dy, cache.h)
    return conv_bn_backward(dy, cache.conv_bn)


def conv_bn_act_infer(x, params, buffers, name, stride, dilation, groups, act, residual=None):
    """Eval ``conv_bn_act_forward`` without a cache (+ ``residual`` after the BN, for a project unit):
    ``units.conv_bn_infer`` (the conv, then BN (+ residual, + ReLU) in one in-place pass), hardswish in
    place after it."""
    y = conv_bn_infer(x, params, buffers, f"{name}.0", f"{name}.1", stride, dilation, relu=act == "relu",
                      residual=residual, eps=MOBILENET_BN_EPS, groups=groups)
    return _hardswish_inplace(y) if act == "hardswish" else y


@numba.njit(cache=True)
def _hardswish_flat(a):
    for i in range(a.size):
        v = a[i]
        a[i] = v * min(max(v + 3, 0), 6) / 6


def _hardswish_inplace(y):
    """y = hardswish(y) in one pass (a C-contiguous array: conv2d_fused's fresh output); whole-array NumPy
    under NUMBA_DISABLE_JIT, where the loop would run per element in Python."""
    if numba.config.DISABLE_JIT:
        y *= np.clip(y + y.dtype.type(3), 0, 6) / y.dtype.type(6)
    else:
        _hardswish_flat(y.reshape(-1))
    return y


# ---------------------------------------------------------------------------------------------
# squeeze-and-excitation (torchvision's SqueezeExcitation with a hardsigmoid scale)


class SECache(NamedTuple):
    name: str
    x: np.ndarray          # (N, C, H, W)
    w1: np.ndarray         # (S, C), fc1's weight as a matrix
    w2: np.ndarray         # (C, S)
    pooled: np.ndarray     # (N, C), the mean over H, W
    z1: np.ndarray         # (N, S), fc1's output (before the ReLU)
    z2: np.ndarray         # (N, C), fc2's output (before the hardsigmoid)
    scale: np.ndarray      # (N, C), hardsigmoid(z2)


def _fc(params, name):
    w = params[f"{name}.weight"]
    return w.reshape(w.shape[0], w.shape[1]), params[f"{name}.bias"]


def _se_scale(x, params, name):
    (w1, b1), (w2, b2) = _fc(params, f"{name}.fc1"), _fc(params, f"{name}.fc2")
    pooled = x.mean(axis=(2, 3))
    z1 = pooled @ w1.T + b1
    z2 = np.maximum(z1, 0) @ w2.T + b2
    return w1, w2, pooled, z1, z2, hardsigmoid(z2)


def se_forward(x, params, name):
    """x * hardsigmoid(fc2(ReLU(fc1(mean_hw(x))))) per channel: x (N, C, H, W) -> (y (N, C, H, W), SECache).
    fc1 ``name.fc1`` (S, C, 1, 1) + bias, fc2 ``name.fc2`` (C, S, 1, 1) + bias."""
    w1, w2, pooled, z1, z2, s = _se_scale(x, params, name)
    return x * s[:, :, None, None], SECache(name, x, w1, w2, pooled, z1, z2, s)


def se_backward(dy, cache):
    """dy (N, C, H, W) -> (dx, {fc1.weight, fc1.bias, fc2.weight, fc2.bias}): x reaches y twice, directly
    (times the scale) and through the mean that makes the scale."""
    c = cache
    H, W = c.x.shape[2:]
    dz2 = hardsigmoid_backward(np.einsum("nchw,nchw->nc", dy, c.x), c.z2)
    dz1 = np.where(c.z1 > 0, dz2 @ c.w2, 0)
    dpooled = dz1 @ c.w1
    dx = dy * c.scale[:, :, None, None] + (dpooled / (H * W))[:, :, None, None]
    r = np.maximum(c.z1, 0)
    return dx, {f"{c.name}.fc1.weight": (dz1.T @ c.pooled)[:, :, None, None], f"{c.name}.fc1.bias": dz1.sum(0),
                f"{c.name}.fc2.weight": (dz2.T @ r)[:, :, None, None], f"{c.name}.fc2.bias": dz2.sum(0)}


def se_infer(x, params, name):
    """Eval ``se_forward`` without a cache, scaling ``x`` in place (it is the depthwise unit's fresh output)."""
    x *= _se_scale(x, params, name)[-1][:, :, None, None]
    return x


# ---------------------------------------------------------------------------------------------
# the inverted residual block


class BlockCache(NamedTuple):
    parts: tuple           # ConvBNActCache or SECache of each part, in order
    residual: bool


def _unit_args(plan: InvertedResidualPlan, part):
    """(stride, dilation, groups, activation) of a conv part."""
    if part == "expand":
        return 1, 1, 1, plan.activation
    if part == "depthwise":
        return plan.stride, plan.dilation, plan.expanded, plan.activation
    return 1, 1, 1, None  # project: linear


def block_forward(x, params, buffers, prefix, plan, training):
    """An inverted residual: expand (1x1, BN, act; left out when ``plan.expanded == plan.in_channels``) ->
    depthwise (k x k, stride, dilation, BN, act) -> SE (if ``plan.squeeze``) -> project (1x1, BN), + x when
    ``plan.residual``. x (N, Cin, H, W) -> (y (N, Cout, H / stride, W / stride), BlockCache).
    ``prefix``: the block's name, e.g. "4"."""
    h, caches = x, []
    for j, part in enumerate(plan.parts):
        name = f"{prefix}.block.{j}"
        if part == "se":
            h, c = se_forward(h, params, name)
        else:
            h, c = conv_bn_act_forward(h, params, buffers, name, *_unit_args(plan, part), training)
        caches.append(c)
    return (h + x if plan.residual else h), BlockCache(tuple(caches), plan.residual)


def block_backward(dy, cache):
    """dy (N, Cout, Ho, Wo) -> (dx (N, Cin, H, W), grads of the block's parameters)."""
    grads, d = {}, dy
    for c in reversed(cache.parts):
        d, g = (se_backward if isinstance(c, SECache) else conv_bn_act_backward)(d, c)
        grads.update(g)
    return (d + dy if cache.residual else d), grads


def block_infer(x, params, buffers, prefix, plan):
    """Eval ``block_forward`` without a cache; the project unit's pass adds the residual."""
    h = x
    for j, part in enumerate(plan.parts):
        name = f"{prefix}.block.{j}"
        if part == "se":
            h = se_infer(h, params, name)
        else:
            last = part == "project" and plan.residual
            h = conv_bn_act_infer(h, params, buffers, name, *_unit_args(plan, part), residual=x if last else None)
    return h


# ---------------------------------------------------------------------------------------------
# the whole backbone


def _taps(spec):
    return {"low_level": str(spec.low_level_index), "low": str(spec.low_index), "out": str(len(spec.blocks) + 1)}


def _collect(spec, features, i, h):
    if i == spec.low_level_index:
        features["low_level"] = h
    elif i == spec.low_index:
        features["low"] = h


def forward(spec: MobileNetV3, params, buffers, x, training):
    """x (N, 3, H, W) -> (features, steps, taps): features {"low_level": features[3] (stride 4), "low":
    features[4] (stride 8), "out": features[16] (N, 960, ceil(H/os), ceil(W/os)) at width 1}; steps the
    (name, cache) of the stem ("0"), every block ("1".."15") and the last conv ("16"); taps {feature: its step}."""
    last = str(len(spec.blocks) + 1)
    h, c = conv_bn_act_forward(x, params, buffers, "0", 2, 1, 1, "hardswish", training)
    steps, features = [("0", c)], {}
    for i, plan in enumerate(spec.blocks, start=1):
        h, c = block_forward(h, params, buffers, str(i), plan, training)
        steps.append((str(i), c))
        _collect(spec, features, i, h)
    h, c = conv_bn_act_forward(h, params, buffers, last, 1, 1, 1, "hardswish", training)
    steps.append((last, c))
    features["out"] = h
    return features, steps, _taps(spec)


def step_backward(dy, cache):
    """One step of ``forward`` backwards: a block or a conv-BN-hardswish unit (stem, last conv)."""
    return block_backward(dy, cache) if isinstance(cache, BlockCache) else conv_bn_act_backward(dy, cache)


def infer(spec: MobileNetV3, params, buffers, x):
    """Eval ``forward`` without caches: x -> features {"low_level", "low", "out"}."""
    h = conv_bn_act_infer(x, params, buffers, "0", 2, 1, 1, "hardswish")
    features = {}
    for i, plan in enumerate(spec.blocks, start=1):
        h = block_infer(h, params, buffers, str(i), plan)
        _collect(spec, features, i, h)
    features["out"] = conv_bn_act_infer(h, params, buffers, str(len(spec.blocks) + 1), 1, 1, 1, "hardswish")
    return features
