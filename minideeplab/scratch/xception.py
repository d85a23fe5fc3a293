"""Aligned Xception from scratch, forward and backward (timm's ``xception41/65/71`` layout and names, dilated
as the spec says; see ``minideeplab.specs.xception`` for the structure): the stem (two 3x3 conv + BN + ReLU),
then blocks of three separable convs (depthwise 3x3 -> BN -> pointwise 1x1 -> BN) with ReLU before each
("start with ReLU"; the last block: ReLU after each BN) and a 1x1 conv + BN or identity shortcut. Every BN has
eps 1e-3.

``forward`` returns ``low_level`` (inside the entry block entered at stride 4, 256 channels: the second
separable conv's pointwise BN output, TF DeepLab's tap, or with ``low_level_tap="smp"`` the ReLU ``act3``
after it, timm's and smp's) and ``out`` (the last block, 2048 channels). The block holding the tap runs as
two steps, ``blocks.{i}.stack.tap`` (up to the tap) and ``blocks.{i}`` (the rest and the sum), so that the
tap's gradient joins between them;
the shortcut's gradient, which skips the tap, reaches the first step through the pair's shared slot.
``minideeplab.scratch.backbone`` runs it through its registry; the twin is
``minideeplab.reference.xception.XceptionBackbone``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minideeplab.scratch.layers import relu, relu_backward
from minideeplab.scratch.params import bn_shapes
from minideeplab.scratch.units import ConvBNCache, conv_bn_backward, conv_bn_forward, conv_bn_infer
from minideeplab.specs.xception import XCEPTION_BN_EPS as BN_EPS
from minideeplab.specs.xception import Xception, XceptionBlock

__all__ = ["parameter_shapes", "SeparableCache", "separable_forward", "separable_backward",
           "StemCache", "BlockCache", "TapCache", "block_forward", "block_backward", "block_infer",
           "forward", "step_backward", "infer"]

def parameter_shapes(spec: Xception) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in timm's state_dict order (less its classifier ``head.fc``)."""
    params, buffers = {}, {}

    def conv_bn(conv, bn, cout, cin, k):
        params[f"{conv}.weight"] = (cout, cin, k, k)
        bn_shapes(params, buffers, bn, cout)

    w = spec.widths
    conv_bn("stem.0.conv", "stem.0.bn", w[0], 3, 3)
    conv_bn("stem.1.conv", "stem.1.bn", w[1], w[0], 3)
    for i, b in enumerate(spec.blocks):
        p = f"blocks.{i}"
        if b.skip == "conv":
            conv_bn(f"{p}.shortcut.conv", f"{p}.shortcut.bn", b.out_channels[2], b.in_channels, 1)
        cin = b.in_channels
        for k, cout in enumerate(b.out_channels, start=1):
            s = f"{p}.stack.conv{k}"
            conv_bn(f"{s}.conv_dw", f"{s}.bn_dw", cin, 1, 3)
            conv_bn(f"{s}.conv_pw", f"{s}.bn_pw", cout, cin, 1)
            cin = cout
    return params, buffers


# ---------------------------------------------------------------------------------------------
# a separable conv: depthwise 3x3 -> BN (-> ReLU) -> pointwise 1x1 -> BN (-> ReLU)


class SeparableCache(NamedTuple):
    depthwise: ConvBNCache
    h: np.ndarray | None     # the ReLU after the depthwise BN (act), else None
    pointwise: ConvBNCache
    y: np.ndarray | None     # the ReLU after the pointwise BN (act), else None


def separable_forward(x, params, buffers, prefix, stride, dilation, act, training):
    """``prefix.conv_dw`` (3x3, one kernel per channel, at ``stride`` and ``dilation``) -> ``prefix.bn_dw``
    (-> ReLU with ``act``) -> ``prefix.conv_pw`` (1x1) -> ``prefix.bn_pw`` (-> ReLU with ``act``).
    x (N, C, H, W) -> (y (N, Cout, ceil(H / stride), ceil(W / stride)), SeparableCache)."""
    h, dw = conv_bn_forward(x, params, buffers, f"{prefix}.conv_dw", f"{prefix}.bn_dw", stride, dilation,
                            training, BN_EPS, groups=x.shape[1])
    h = relu(h) if act else h
    y, pw = conv_bn_forward(h, params, buffers, f"{prefix}.conv_pw", f"{prefix}.bn_pw", 1, 1, training, BN_EPS)
    y = relu(y) if act else y
    return y, SeparableCache(dw, h if act else None, pw, y if act else None)


def separable_backward(dy, cache):
    """dy (N, Cout, Ho, Wo) -> (dx (N, C, H, W), grads of the two convs and BNs)."""
    if cache.y is not None:
        dy = relu_backward(dy, cache.y)  # a ReLU's output is positive where its input is
    dh, grads = conv_bn_backward(dy, cache.pointwise)
    if cache.h is not None:
        dh = relu_backward(dh, cache.h)
    dx, g = conv_bn_backward(dh, cache.depthwise)
    return dx, grads | g


# ---------------------------------------------------------------------------------------------
# the stem and the blocks


class StemCache(NamedTuple):
    convs: tuple       # the two ConvBNCache
    ys: tuple          # their ReLU outputs


def _stem_forward(x, params, buffers, training):
    convs, ys, h = [], [], x
    for k, stride in ((0, 2), (1, 1)):
        h, c = conv_bn_forward(h, params, buffers, f"stem.{k}.conv", f"stem.{k}.bn", stride, 1, training, BN_EPS)
        h = relu(h)
        convs.append(c)
        ys.append(h)
    return h, StemCache(tuple(convs), tuple(ys))


def _stem_backward(dy, cache):
    grads = {}
    for c, y in zip(reversed(cache.convs), reversed(cache.ys)):
        dy, g = conv_bn_backward(relu_backward(dy, y), c)
        grads.update(g)
    return dy, grads


class TapCache(NamedTuple):
    """The first step of a block split at its tap: its path up to the tap."""

    path: list         # ("relu", output) or ("sep", SeparableCache), in forward order
    shared: list       # [dL/dx through the block's shortcut], written by the second step's backward


class BlockCache(NamedTuple):
    path: list                    # as TapCache's; for a split block, from the third separable conv on
    shortcut: ConvBNCache | None  # the 1x1 conv + BN shortcut's, or None
    skip: str                     # "conv", "sum" or "none"
    shared: list | None           # a split block: the slot shared with its TapCache; else None


def _path_forward(h, params, buffers, prefix, b: XceptionBlock, ks, training, relus=(True, True, True)):
    """The separable convs ``ks`` (of 0, 1, 2) of block ``b``; with start_with_relu, conv k has the ReLU
    before it where ``relus[k]`` (the second step of a block split at smp's tap starts after ``act3``)."""
    path = []
    for k in ks:
        if b.start_with_relu and relus[k]:
            h = relu(h)
            path.append(("relu", h))
        h, c = separable_forward(h, params, buffers, f"{prefix}.stack.conv{k + 1}", b.stride if k == 2 else 1,
                                 b.dilation, not b.start_with_relu, training)
        path.append(("sep", c))
    return h, path


def _path_backward(dy, path):
    grads = {}
    for kind, c in reversed(path):
        if kind == "relu":
            dy = relu_backward(dy, c)
        else:
            dy, g = separable_backward(dy, c)
            grads.update(g)
    return dy, grads


def block_forward(x, params, buffers, prefix, b: XceptionBlock, training, split=None):
    """One block: x (N, Cin, H, W) -> (y (N, Cout, ceil(H / stride), ceil(W / stride)), tap, caches).
    Whole (``split`` None): tap None, caches [BlockCache]. Split at the tap ("tf": the second separable
    conv's output; "smp": ``act3``, the ReLU after it), (N, out_channels[1], H, W): caches [TapCache,
    BlockCache]."""
    if b.skip == "conv":
        s, sc = conv_bn_forward(x, params, buffers, f"{prefix}.shortcut.conv", f"{prefix}.shortcut.bn", b.stride, 1,
                                training, BN_EPS)
    else:
        s, sc = (x if b.skip == "sum" else None), None
    if not split:
        h, path = _path_forward(x, params, buffers, prefix, b, (0, 1, 2), training)
        return (h if s is None else h + s), None, [BlockCache(path, sc, b.skip, None)]
    if not b.start_with_relu:
        raise ValueError(f"block_forward: block {prefix} has no ReLU before its third separable conv to tap")
    shared = [None]
    tap, head = _path_forward(x, params, buffers, prefix, b, (0, 1), training)
    if split == "smp":
        tap = relu(tap)
        head.append(("relu", tap))
    h, tail = _path_forward(tap, params, buffers, prefix, b, (2,), training, relus=(True, True, split != "smp"))
    return (h if s is None else h + s), tap, [TapCache(head, shared), BlockCache(tail, sc, b.skip, shared)]


def block_backward(dy, cache):
    """One step of a block backwards: dy (its output's gradient) -> (dx (its input's), grads)."""
    if isinstance(cache, TapCache):
        dx, grads = _path_backward(dy, cache.path)
        skip, cache.shared[0] = cache.shared[0], None
        return (dx if skip is None else dx + skip), grads
    dx, grads = _path_backward(dy, cache.path)
    skip = None
    if cache.skip == "conv":
        skip, g = conv_bn_backward(dy, cache.shortcut)
        grads.update(g)
    elif cache.skip == "sum":
        skip = dy
    if cache.shared is not None:  # the first step of the pair adds it to its own dx
        cache.shared[0] = skip
        return dx, grads
    return (dx if skip is None else dx + skip), grads


def block_infer(x, params, buffers, prefix, b: XceptionBlock, tap_kind="smp"):
    """Eval ``block_forward`` without caches -> (y, tap): every BN (with the ReLU after it, and the residual
    sum after the last) folded into one pass after its conv; tap as ``block_forward``'s split at ``tap_kind``."""
    s = x if b.skip == "sum" else None
    if b.skip == "conv":
        s = conv_bn_infer(x, params, buffers, f"{prefix}.shortcut.conv", f"{prefix}.shortcut.bn", b.stride, 1,
                          relu=False, eps=BN_EPS)
    h = np.maximum(x, x.dtype.type(0)) if b.start_with_relu else x  # act1; act2, act3 fold into the convs before
    tap = None
    for k in range(3):
        p, last = f"{prefix}.stack.conv{k + 1}", k == 2
        h = conv_bn_infer(h, params, buffers, f"{p}.conv_dw", f"{p}.bn_dw", b.stride if last else 1, b.dilation,
                          relu=not b.start_with_relu, eps=BN_EPS, groups=h.shape[1])
        pre = b.start_with_relu and k == 1 and tap_kind == "tf"  # the tap is the BN output, before act3
        h = conv_bn_infer(h, params, buffers, f"{p}.conv_pw", f"{p}.bn_pw", 1, 1,
                          relu=not (b.start_with_relu and last) and not pre, residual=s if last else None, eps=BN_EPS)
        if k == 1:
            tap = h
            h = np.maximum(h, h.dtype.type(0)) if pre else h
    return h, tap


# ---------------------------------------------------------------------------------------------
# the whole backbone


def _tap_name(spec):
    return f"blocks.{spec.low_level_block}.stack.tap"


def forward(spec: Xception, params, buffers, x, training):
    """x (N, 3, H, W) -> (features, steps, taps): features {"low_level": (N, 256, ceil(H/4), ceil(W/4)) at full
    width, "out": (N, 2048, ceil(H/os), ceil(W/os))}; steps the (name, cache) of the stem and every block in
    order (the tap's block as two steps); taps {feature: the step whose output it is}."""
    h, c = _stem_forward(x, params, buffers, training)
    steps, features = [("stem", c)], {}
    for i, b in enumerate(spec.blocks):
        split = spec.low_level_tap if i == spec.low_level_block else None
        h, tap, caches = block_forward(h, params, buffers, f"blocks.{i}", b, training, split)
        if split:
            features["low_level"] = tap
            steps.append((_tap_name(spec), caches[0]))
        steps.append((f"blocks.{i}", caches[-1]))
    features["out"] = h
    return features, steps, {"low_level": _tap_name(spec), "out": f"blocks.{len(spec.blocks) - 1}"}


def step_backward(dy, cache):
    """One step of ``forward`` backwards: the stem, a block, or the first part of the tap's block."""
    return _stem_backward(dy, cache) if isinstance(cache, StemCache) else block_backward(dy, cache)


def infer(spec: Xception, params, buffers, x):
    """Eval ``forward`` without caches: x -> features {"low_level", "out"}."""
    h = x
    for k, stride in ((0, 2), (1, 1)):
        h = conv_bn_infer(h, params, buffers, f"stem.{k}.conv", f"stem.{k}.bn", stride, 1, eps=BN_EPS)
    features = {}
    for i, b in enumerate(spec.blocks):
        h, tap = block_infer(h, params, buffers, f"blocks.{i}", b, spec.low_level_tap)
        if i == spec.low_level_block:
            features["low_level"] = tap
    features["out"] = h
    return features
