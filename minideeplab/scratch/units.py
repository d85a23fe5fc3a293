"""The small units networks are made of, forward, backward and eval, CS231n style: conv + BN (the unit of
every ResNet block), conv + ReLU (VGG), conv + BN + ReLU (plain or depthwise-separable: ASPP branches, decoder
convs), 1x1 convs with bias (class scores), dropout.

``*_forward(x, params, buffers, names..., training) -> (y, cache)``, ``*_backward(dy, cache) -> (dx, grads)``
with grads keyed like ``params``; ``*_infer`` is the eval forward without a cache, each conv's batch norm,
ReLU (and a residual sum) folded into one in-place pass after it (``atrous.conv2d_fused``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minideeplab.scratch.atrous import atrous_conv2d, atrous_conv2d_backward, conv2d_fused
from minideeplab.scratch.layers import (BN_EPS, BatchNormCache, batch_norm2d, batch_norm2d_backward, dropout, relu,
                                        relu_backward, separable_conv2d, separable_conv2d_backward)
from minideeplab.scratch.params import join

__all__ = ["ConvBNCache", "conv_bn_forward", "conv_bn_backward", "conv_bn_infer", "bn_scale_shift", "check_channels",
           "ConvReLUCache", "conv_relu_forward", "conv_relu_backward", "conv_relu_infer",
           "SeparableBNCache", "ConvUnitCache", "conv_unit_forward", "conv_unit_backward", "conv_unit_infer",
           "Conv1x1Cache", "conv1x1_forward", "conv1x1_backward", "conv1x1_infer",
           "ConvBiasCache", "conv_bias_forward", "conv_bias_backward", "maybe_dropout"]


# ---------------------------------------------------------------------------------------------
# conv + BN


class ConvBNCache(NamedTuple):
    conv: str          # parameter names
    bn: str
    x: np.ndarray      # the conv's input
    weight: np.ndarray
    stride: int
    dilation: int
    bn_cache: BatchNormCache
    groups: int = 1


def conv_bn_forward(x, params, buffers, conv, bn, stride, dilation, training, eps=BN_EPS, groups=1, momentum=0.1):
    """Conv (no bias, "same" padding dilation * (k - 1) / 2) then batch norm.
    x (N, C, H, W) -> (y (N, Cout, ceil(H / stride), ceil(W / stride)), ConvBNCache).
    ``conv``, ``bn``: the names, e.g. "layer1.0.conv1", "layer1.0.bn1". Training updates the BN's
    running statistics in ``buffers`` in place and counts the batch in num_batches_tracked, as torch.
    eps, momentum: the BN's (torch's 1e-5 and 0.1; TF's eps and so Xception's 1e-3; torchvision's MobileNetV3
    1e-3 and 0.01); groups: the conv's (x's channels: depthwise)."""
    w = params[f"{conv}.weight"]
    h = atrous_conv2d(x, w, None, rate=dilation, stride=stride, padding="same", groups=groups)
    y, bn_cache = batch_norm2d(h, params[f"{bn}.weight"], params[f"{bn}.bias"],
                               buffers[f"{bn}.running_mean"], buffers[f"{bn}.running_var"], training, momentum, eps)
    if training:
        buffers[f"{bn}.num_batches_tracked"] += 1
    return y, ConvBNCache(conv, bn, x, w, stride, dilation, bn_cache, groups)


def conv_bn_backward(dy, cache):
    """dy (N, Cout, Ho, Wo) -> (dx, {conv.weight, bn.weight, bn.bias})."""
    c = cache
    dh, dgamma, dbeta = batch_norm2d_backward(dy, c.bn_cache)
    dx, dw, _ = atrous_conv2d_backward(dh, c.x, c.weight, rate=c.dilation, stride=c.stride, padding="same",
                                       groups=c.groups)
    return dx, {f"{c.conv}.weight": dw, f"{c.bn}.weight": dgamma, f"{c.bn}.bias": dbeta}


def check_channels(fn, x, weight, arrays):
    """``arrays`` ({name: array}) must each be (Cout,) with x's dtype, Cout = weight.shape[0]: the per-channel
    arrays of an eval unit, checked before they are folded into a scale and shift (where a wrong shape
    would broadcast silently or fail with a name the caller never used)."""
    for name, a in (("x", x), ("weight", weight)):
        if not isinstance(a, np.ndarray) or a.ndim != 4:
            raise ValueError(f"{fn}: {name} must be a 4-D array, got "
                             f"{a.shape if isinstance(a, np.ndarray) else type(a).__name__}")
    cout = weight.shape[0]
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype != x.dtype or a.shape != (cout,):
            got = f"{a.shape} {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"{fn}: {name} is {got}, expected ({cout},) {x.dtype}: one per output channel of "
                             f"the conv, in x's dtype")


def bn_scale_shift(params, buffers, bn, eps=BN_EPS):
    """Eval batch norm ``bn`` as y = x * scale + shift: scale = gamma / sqrt(running_var + eps),
    shift = beta - running_mean * scale; both (C,)."""
    gamma, var = params[f"{bn}.weight"], buffers[f"{bn}.running_var"]
    scale = gamma / np.sqrt(var + var.dtype.type(eps))
    return scale, params[f"{bn}.bias"] - buffers[f"{bn}.running_mean"] * scale


def conv_bn_infer(x, params, buffers, conv, bn, stride, dilation, relu=True, residual=None, eps=BN_EPS, groups=1):
    """Eval ``conv_bn_forward`` (+ residual, + ReLU) without a cache: act(bn(conv(x)) + residual).
    groups: of the conv (x's channels: depthwise)."""
    check_channels("conv_bn_infer", x, params[f"{conv}.weight"],
                   {f"{bn}.{k}": params[f"{bn}.{k}"] for k in ("weight", "bias")}
                   | {f"{bn}.{k}": buffers[f"{bn}.{k}"] for k in ("running_mean", "running_var")})
    scale, shift = bn_scale_shift(params, buffers, bn, eps)
    return conv2d_fused(x, params[f"{conv}.weight"], scale, shift, dilation, stride, "same", groups,
                        residual=residual, relu=relu)


# ---------------------------------------------------------------------------------------------
# conv + ReLU (VGG)


class ConvReLUCache(NamedTuple):
    name: str
    x: np.ndarray
    weight: np.ndarray
    dilation: int
    y: np.ndarray


def conv_relu_forward(x, params, name, dilation):
    """ReLU(conv(x) + bias), stride 1, "same" padding. x (N, C, H, W) -> (y (N, Cout, H, W), ConvReLUCache)."""
    w = params[f"{name}.weight"]
    y = relu(atrous_conv2d(x, w, params[f"{name}.bias"], rate=dilation, stride=1, padding="same"))
    return y, ConvReLUCache(name, x, w, dilation, y)


def conv_relu_backward(dy, cache):
    """dy (N, Cout, H, W) -> (dx, {name.weight, name.bias})."""
    c = cache
    dh = relu_backward(dy, c.y)
    dx, dw, db = atrous_conv2d_backward(dh, c.x, c.weight, rate=c.dilation, stride=1, padding="same")
    return dx, {f"{c.name}.weight": dw, f"{c.name}.bias": db}


def conv_relu_infer(x, params, name, dilation):
    """``conv_relu_forward`` without a cache: ReLU(conv(x) + bias)."""
    b = params[f"{name}.bias"]
    check_channels("conv_relu_infer", x, params[f"{name}.weight"], {f"{name}.bias": b})
    return conv2d_fused(x, params[f"{name}.weight"], np.ones_like(b), b, dilation, 1, "same", relu=True)


# ---------------------------------------------------------------------------------------------
# conv + BN + ReLU, 1x1 convs with bias, dropout


class SeparableBNCache(NamedTuple):
    conv: str               # the separable conv's name (its ``.0`` depthwise and ``.1`` pointwise)
    bn: str
    x: np.ndarray
    depthwise: np.ndarray
    pointwise: np.ndarray
    rate: int
    bn_cache: BatchNormCache


class ConvUnitCache(NamedTuple):
    """What ``conv_unit_backward`` needs: the conv-BN part's cache and the ReLU's output."""

    inner: ConvBNCache | SeparableBNCache
    y: np.ndarray


def conv_unit_forward(x, params, buffers, prefix, rate, separable, training, conv="0", bn="1"):
    """ReLU(BN(conv(x))): conv ``prefix.conv`` (kernel from its weight, "same" padding at ``rate``, no
    bias; separable: depthwise ``.0`` at ``rate`` then pointwise ``.1``), BN ``prefix.bn``.
    x (N, Cin, H, W) -> (y (N, Cout, H, W), ConvUnitCache). Training updates the BN's buffers in place."""
    c, b = join(prefix, conv), join(prefix, bn)
    if not separable:
        h, inner = conv_bn_forward(x, params, buffers, c, b, 1, rate, training)
    else:
        dw, pw = params[f"{c}.0.weight"], params[f"{c}.1.weight"]
        h = separable_conv2d(x, dw, pw, rate)
        h, bn_cache = batch_norm2d(h, params[f"{b}.weight"], params[f"{b}.bias"],
                                   buffers[f"{b}.running_mean"], buffers[f"{b}.running_var"], training)
        if training:
            buffers[f"{b}.num_batches_tracked"] += 1
        inner = SeparableBNCache(c, b, x, dw, pw, rate, bn_cache)
    y = relu(h)
    return y, ConvUnitCache(inner, y)


def conv_unit_backward(dy, cache):
    """dy (N, Cout, H, W) -> (dx (N, Cin, H, W), grads of the unit's conv and BN)."""
    dh = relu_backward(dy, cache.y)
    c = cache.inner
    if isinstance(c, ConvBNCache):
        return conv_bn_backward(dh, c)
    dh, dgamma, dbeta = batch_norm2d_backward(dh, c.bn_cache)
    dx, ddw, dpw = separable_conv2d_backward(dh, c.x, c.depthwise, c.pointwise, c.rate)
    return dx, {f"{c.conv}.0.weight": ddw, f"{c.conv}.1.weight": dpw, f"{c.bn}.weight": dgamma, f"{c.bn}.bias": dbeta}


def conv_unit_infer(x, params, buffers, prefix, rate, separable, conv="0", bn="1"):
    """Eval ``conv_unit_forward`` without a cache: ReLU(BN(conv(x))), BN and ReLU in one pass."""
    c, b = join(prefix, conv), join(prefix, bn)
    if not separable:
        return conv_bn_infer(x, params, buffers, c, b, 1, rate)
    h = atrous_conv2d(x, params[f"{c}.0.weight"], None, rate, 1, "same", groups=x.shape[1])  # depthwise
    check_channels("conv_unit_infer", h, params[f"{c}.1.weight"],
                   {f"{b}.{k}": params[f"{b}.{k}"] for k in ("weight", "bias")}
                   | {f"{b}.{k}": buffers[f"{b}.{k}"] for k in ("running_mean", "running_var")})
    scale, shift = bn_scale_shift(params, buffers, b)
    return conv2d_fused(h, params[f"{c}.1.weight"], scale, shift, 1, 1, 0, relu=True)


class Conv1x1Cache(NamedTuple):
    name: str
    x: np.ndarray
    weight: np.ndarray


def conv1x1_forward(x, params, name):
    """A 1x1 conv with bias (a classifier): x (N, C, H, W) -> (N, Cout, H, W)."""
    w = params[f"{name}.weight"]
    return atrous_conv2d(x, w, params[f"{name}.bias"], 1, 1, 0), Conv1x1Cache(name, x, w)


def conv1x1_backward(dy, cache):
    dx, dw, db = atrous_conv2d_backward(dy, cache.x, cache.weight, 1, 1, 0)
    return dx, {f"{cache.name}.weight": dw, f"{cache.name}.bias": db}


def conv1x1_infer(x, params, name, residual=None):
    """``conv1x1_forward`` without a cache (+ residual, added in the same pass)."""
    b = params[f"{name}.bias"]
    check_channels("conv1x1_infer", x, params[f"{name}.weight"], {f"{name}.bias": b})
    return conv2d_fused(x, params[f"{name}.weight"], np.ones_like(b), b, 1, 1, 0, residual=residual)


class ConvBiasCache(NamedTuple):
    name: str
    x: np.ndarray
    weight: np.ndarray
    rate: int


def conv_bias_forward(x, params, name, rate):
    """conv(x) + bias at ``rate``, stride 1, "same" padding, no activation (a classifier):
    x (N, C, H, W) -> (N, Cout, H, W)."""
    w = params[f"{name}.weight"]
    return atrous_conv2d(x, w, params[f"{name}.bias"], rate, 1, "same"), ConvBiasCache(name, x, w, rate)


def conv_bias_backward(dy, cache):
    dx, dw, db = atrous_conv2d_backward(dy, cache.x, cache.weight, cache.rate, 1, "same")
    return dx, {f"{cache.name}.weight": dw, f"{cache.name}.bias": db}


def maybe_dropout(x, p, training, rng, fn):
    """Dropout when training with p > 0 (then ``rng`` must be a Generator), else the identity with
    mask None (torch's F.dropout with p = 0 is the identity too)."""
    if not training or p == 0:
        return x, None
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{fn}: rng must be a numpy.random.Generator (np.random.default_rng(seed)) when "
                         f"training with dropout {p}, got {type(rng).__name__}")
    return dropout(x, p, True, rng)
