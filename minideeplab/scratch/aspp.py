"""Atrous spatial pyramid pooling from scratch, forward and backward: DeepLab v3's ASPP and DeepLab v2's
ASPP-L, in NumPy on top of ``atrous``, ``layers`` and ``backbone``.

One feature map, looked at through several atrous rates at once: each branch sees the same pixels with
a different field of view, and the branches are fused.

* ``ASPP`` (v3, v3+): a 1x1 branch, one 3x3 branch per rate in ``atrous_rates`` and ``image_pooling``
  (global average pool, 1x1, BN, ReLU, broadcast back to the map), each conv without bias and followed
  by BN + ReLU; the branches are concatenated and a 1x1 ``project``ion (+ BN, ReLU, dropout) fuses them.
  ``separable=True`` makes each 3x3 branch depthwise 3x3 + pointwise 1x1 (Xception, v3+).
* ``ASPPL`` (v2, "ASPP-L"): one branch per rate (6, 12, 18, 24), the branches' logits summed, in one
  of two forms:
  - ``fc_channels=None``, the released DeepLab-v2 ResNet-101 (Caffe prototxt ``fc1_voc12_c0..c3``, and
    its ports): each branch is ONE 3x3 conv at its rate, straight from the features to the classes,
    with bias. No ReLU, no dropout: the head is linear.
  - ``fc_channels=1024``, the DeepLab-v2 VGG-16 ASPP-L (the paper's, on pool5): each branch is fc6
    (3x3 at the rate) -> ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout -> fc8 (1x1 to the classes),
    all with bias.

Parameters live in flat dicts keyed by ``state_dict`` names below a ``prefix`` (``"classifier.0"`` in
torchvision's DeepLab v3), as in ``backbone``, so real weights load by name:

    ASPP   convs.0.0.weight                   1x1 conv            convs.0.1.*   its BN
           convs.{i}.0.weight  (i = 1..R)     3x3 conv at rate i  convs.{i}.1.* its BN
             separable: convs.{i}.0.0.weight  depthwise (C, 1, 3, 3)  (smp's SeparableConv2d layout,
                        convs.{i}.0.1.weight  pointwise (256, C, 1, 1) read from its source)
           convs.{R+1}.1.weight               image pooling 1x1   convs.{R+1}.2.* its BN  (.0 is the pool)
           project.0.weight                   1x1 fusion          project.1.*   its BN  (.3 is the dropout)
    ASPPL  fc_channels=None: branches.{i}.weight/.bias   3x3 conv at rate i to the classes
             (Caffe's fc1_voc12_c{i}; kazuto1011/deeplab-pytorch's aspp.c{i})
           fc_channels=int:  branches.{i}.fc6.weight/.bias, branches.{i}.fc7.weight/.bias,
             branches.{i}.fc8.weight/.bias (dropouts: branches.{i}.drop6, branches.{i}.drop7)

BN ``*`` = weight, bias (params), running_mean, running_var, num_batches_tracked (buffers). This is
torchvision's ``ASPP`` module exactly (``classifier.0`` of ``deeplabv3_resnet50``), and smp's with
``separable=True``. ASPP-L's names are ours: ``branches.{i}`` is the branch at ``atrous_rates[i]``, a
conv itself in the ResNet form, with the paper's fc6/fc7/fc8 inside it in the VGG form.

Dropout runs only when training (``rng``, a ``np.random.Generator``, draws the masks); the caches keep
each mask under its module's name (``dropout_masks``), so that a PyTorch twin can replay them.

Functions, CS231n style: ``aspp_forward(spec, params, buffers, x, training, rng, prefix) -> (y, cache)``,
``aspp_backward(dy, cache) -> (dx, grads)``; the same for ``aspp_l``. ``grads`` is keyed like the params.
The PyTorch twin is ``minideeplab.reference.aspp``.

Eval without caches: ``aspp_infer(spec, params, buffers, x, prefix) -> y`` and ``aspp_l_infer``, the same
numbers as the forwards with ``training=False`` (up to float rounding), each conv's batch norm and ReLU
done in one in-place pass after it (``units.conv_bn_infer``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minideeplab.scratch.atrous import conv2d_fused
from minideeplab.scratch.layers import (concat, concat_backward, dropout_backward, global_avg_pool,
                                        global_avg_pool_backward, resize_bilinear, resize_bilinear_backward)
from minideeplab.scratch.params import check_subset, conv_unit_shapes, init_params, join
from minideeplab.scratch.units import (ConvUnitCache, conv1x1_backward, conv1x1_forward, conv1x1_infer,
                                       conv_bias_backward, conv_bias_forward, conv_relu_backward, conv_relu_forward,
                                       conv_relu_infer, conv_unit_backward, conv_unit_forward, conv_unit_infer,
                                       maybe_dropout)
from minideeplab.specs.aspp import ASPP, ASPPL
from minideeplab.specs.checks import check_float_array

__all__ = ["ASPP", "ASPPL", "parameter_shapes", "init_aspp", "ASPPCache", "aspp_forward", "aspp_backward", "aspp_infer",
           "ASPPLCache", "aspp_l_forward", "aspp_l_backward", "aspp_l_infer", "aspp_l_as_one_conv"]


def _check_spec(fn, spec, cls=(ASPP, ASPPL)):
    if not isinstance(spec, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise ValueError(f"{fn}: spec must be an {names}, got {type(spec).__name__}")


# ---------------------------------------------------------------------------------------------
# parameters


def parameter_shapes(spec, prefix="") -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape in the twin's state_dict order, names below ``prefix``."""
    _check_spec("parameter_shapes", spec)
    params, buffers = {}, {}
    if isinstance(spec, ASPPL):
        for i in range(len(spec.atrous_rates)):
            b = join(prefix, f"branches.{i}")
            if not spec.has_fc:
                params[f"{b}.weight"], params[f"{b}.bias"] = (spec.num_classes, spec.in_channels, 3, 3), (spec.num_classes,)
                continue
            fc = spec.fc_channels
            for name, shape in (("fc6", (fc, spec.in_channels, 3, 3)), ("fc7", (fc, fc, 1, 1)),
                                ("fc8", (spec.num_classes, fc, 1, 1))):
                params[f"{b}.{name}.weight"], params[f"{b}.{name}.bias"] = shape, shape[:1]
        return params, buffers
    cin, cout = spec.in_channels, spec.out_channels
    conv_unit_shapes(params, buffers, join(prefix, "convs.0"), cin, cout, 1)
    for i in range(1, len(spec.atrous_rates) + 1):
        conv_unit_shapes(params, buffers, join(prefix, f"convs.{i}"), cin, cout, 3, spec.separable)
    if spec.image_pooling:
        conv_unit_shapes(params, buffers, join(prefix, f"convs.{spec.pooling_index}"), cin, cout, 1, conv="1", bn="2")
    conv_unit_shapes(params, buffers, join(prefix, "project"), spec.num_branches * cout, cout, 1)
    return params, buffers


def init_aspp(spec, rng, dtype=np.float32, prefix=""):
    """Fresh (params, buffers) for an ASPP or ASPPL, names below ``prefix`` (``params.init_params``, shared
    with ``backbone.init_backbone``)."""
    _check_spec("init_aspp", spec)
    return init_params(*parameter_shapes(spec, prefix), rng, dtype, "init_aspp")


# ---------------------------------------------------------------------------------------------
# building blocks: conv-BN-ReLU units, 1x1 convs with bias, dropout


def _check_call(fn, spec, cls, params, buffers, x, training, prefix):
    _check_spec(fn, spec, cls)
    if not isinstance(prefix, str):
        raise ValueError(f"{fn}: prefix must be a str, got {type(prefix).__name__}")
    check_float_array(fn, "x", x, 4, "(N, C, H, W)")
    if x.shape[1] != spec.in_channels:
        raise ValueError(f"{fn}: x has shape {x.shape}, expected {spec.in_channels} channels "
                         f"(spec.in_channels) in (N, C, H, W)")
    if not isinstance(training, (bool, np.bool_)):
        raise ValueError(f"{fn}: training must be True or False, got {training!r}")
    check_subset(fn, repr(spec) + (f" below {prefix!r}" if prefix else ""), *parameter_shapes(spec, prefix),
                 params, buffers, x.dtype, prefix)


def _check_dy(fn, dy, shape, dtype):
    check_float_array(fn, "dy", dy)
    if dy.dtype != dtype:
        raise ValueError(f"{fn}: dy has dtype {dy.dtype} but the forward's x had {dtype}")
    if dy.shape != shape:
        raise ValueError(f"{fn}: dy has shape {dy.shape}, expected {shape} (the forward's output shape)")


# ---------------------------------------------------------------------------------------------
# ASPP (v3)


class ASPPCache(NamedTuple):
    """What ``aspp_backward`` needs."""

    spec: ASPP
    prefix: str
    branches: list          # ConvUnitCache of convs.0 .. convs.R
    pool: ConvUnitCache | None  # the image pooling branch's conv unit (on the pooled (N, C, 1, 1) map)
    project: ConvUnitCache
    mask: np.ndarray | None  # the dropout mask (None in eval)
    x_shape: tuple
    y_shape: tuple
    dtype: np.dtype

    @property
    def masks(self) -> dict:
        """{dropout module name: mask} for the masks drawn (none in eval)."""
        return {} if self.mask is None else {join(self.prefix, "project.3"): self.mask}


def aspp_forward(spec, params, buffers, x, training, rng=None, prefix=""):
    """x (N, in_channels, H, W) -> (y (N, out_channels, H, W), ASPPCache).

    branches: convs.0 = ReLU(BN(1x1 conv)); convs.i = ReLU(BN(3x3 conv at atrous_rates[i-1])) (or the
    separable conv); image pooling = bilinear resize (align_corners=False: a broadcast) to (H, W) of
    ReLU(BN(1x1 conv(mean over H, W))). y = dropout(ReLU(BN(1x1 conv(concat(branches))))).
    training: BN with batch statistics (updating the running ones in ``buffers`` in place) and dropout
    with masks from ``rng``; the image pooling BN then sees one value per image and channel, so N >= 2.
    """
    fn = "aspp_forward"
    _check_call(fn, spec, ASPP, params, buffers, x, training, prefix)
    training = bool(training)
    N, _, H, W = x.shape
    if training and spec.image_pooling and N < 2:
        raise ValueError(f"{fn}: x has shape {x.shape}: training with image_pooling needs N >= 2 (its batch "
                         f"norm sees one value per image and channel)")
    if training and N * H * W < 2:
        raise ValueError(f"{fn}: x has shape {x.shape}: training (batch norm) needs N * H * W >= 2")
    outs, branches = [], []
    h, c = conv_unit_forward(x, params, buffers, join(prefix, "convs.0"), 1, False, training)
    outs.append(h)
    branches.append(c)
    for i, rate in enumerate(spec.atrous_rates, start=1):
        h, c = conv_unit_forward(x, params, buffers, join(prefix, f"convs.{i}"), rate, spec.separable, training)
        outs.append(h)
        branches.append(c)
    pool = None
    if spec.image_pooling:
        g, pool = conv_unit_forward(global_avg_pool(x), params, buffers, join(prefix, f"convs.{spec.pooling_index}"),
                                    1, False, training, conv="1", bn="2")
        outs.append(resize_bilinear(g, (H, W), False))
    h, project = conv_unit_forward(concat(outs), params, buffers, join(prefix, "project"), 1, False, training)
    y, mask = maybe_dropout(h, spec.dropout, training, rng, fn)
    return y, ASPPCache(spec, prefix, branches, pool, project, mask, x.shape, y.shape, x.dtype)


def aspp_backward(dy, cache):
    """dy (N, out_channels, H, W) -> (dx (N, in_channels, H, W), grads), grads keyed and ordered like
    the params. Every branch read x, so dx sums the branches' input gradients."""
    fn = "aspp_backward"
    if not isinstance(cache, ASPPCache):
        raise ValueError(f"{fn}: cache must be the ASPPCache returned by aspp_forward, got {type(cache).__name__}")
    _check_dy(fn, dy, cache.y_shape, cache.dtype)
    spec, grads = cache.spec, {}
    d = dy if cache.mask is None else dropout_backward(dy, cache.mask)
    d, g = conv_unit_backward(d, cache.project)
    grads.update(g)
    parts = concat_backward(d, [spec.out_channels] * spec.num_branches)
    dx = np.zeros(cache.x_shape, dtype=cache.dtype)
    for part, c in zip(parts, cache.branches):
        dxi, g = conv_unit_backward(part, c)
        grads.update(g)
        dx += dxi
    if cache.pool is not None:
        N, C, H, W = cache.x_shape
        dg = resize_bilinear_backward(parts[-1], (N, spec.out_channels, 1, 1), False)
        dp, g = conv_unit_backward(dg, cache.pool)
        grads.update(g)
        dx += global_avg_pool_backward(dp, cache.x_shape)
    order = parameter_shapes(spec, cache.prefix)[0]
    return dx, {k: grads[k] for k in order}


# ---------------------------------------------------------------------------------------------
# ASPP-L (v2)


class ASPPLCache(NamedTuple):
    """What ``aspp_l_backward`` needs: per branch its conv's cache (ResNet form), or the fc6, fc7 caches,
    the two dropout masks and fc8's (VGG form)."""

    spec: ASPPL
    prefix: str
    branches: list          # ConvBiasCache, or (ConvReLUCache fc6, mask6, ConvReLUCache fc7, mask7, Conv1x1Cache fc8)
    x_shape: tuple
    y_shape: tuple
    dtype: np.dtype

    @property
    def masks(self) -> dict:
        out = {}
        if not self.spec.has_fc:
            return out
        for i, (_, m6, _, m7, _) in enumerate(self.branches):
            for name, m in (("drop6", m6), ("drop7", m7)):
                if m is not None:
                    out[join(self.prefix, f"branches.{i}.{name}")] = m
        return out


def aspp_l_forward(spec, params, buffers, x, training, rng=None, prefix=""):
    """x (N, in_channels, H, W) -> (y (N, num_classes, H, W), ASPPLCache): y = sum over the rates of
    conv_rate(x) + bias (fc_channels None), or of fc8(drop7(ReLU(fc7(drop6(ReLU(fc6_rate(x))))))).
    No BN: training only turns dropout on (fc form). ``buffers`` is unused (ASPP-L has none); pass {}."""
    fn = "aspp_l_forward"
    _check_call(fn, spec, ASPPL, params, buffers, x, training, prefix)
    training = bool(training)
    y, branches = None, []
    for i, rate in enumerate(spec.atrous_rates):
        b = join(prefix, f"branches.{i}")
        if not spec.has_fc:
            s, c = conv_bias_forward(x, params, b, rate)
            y = s if y is None else y + s
            branches.append(c)
            continue
        h, c6 = conv_relu_forward(x, params, f"{b}.fc6", rate)
        h, m6 = maybe_dropout(h, spec.dropout, training, rng, fn)
        h, c7 = conv_relu_forward(h, params, f"{b}.fc7", 1)
        h, m7 = maybe_dropout(h, spec.dropout, training, rng, fn)
        s, c8 = conv1x1_forward(h, params, f"{b}.fc8")
        y = s if y is None else y + s
        branches.append((c6, m6, c7, m7, c8))
    return y, ASPPLCache(spec, prefix, branches, x.shape, y.shape, x.dtype)


def aspp_l_backward(dy, cache):
    """dy (N, num_classes, H, W) -> (dx (N, in_channels, H, W), grads): the sum sends dy to every branch."""
    fn = "aspp_l_backward"
    if not isinstance(cache, ASPPLCache):
        raise ValueError(f"{fn}: cache must be the ASPPLCache returned by aspp_l_forward, got {type(cache).__name__}")
    _check_dy(fn, dy, cache.y_shape, cache.dtype)
    grads, dx = {}, np.zeros(cache.x_shape, dtype=cache.dtype)
    if not cache.spec.has_fc:
        for c in cache.branches:
            d, g = conv_bias_backward(dy, c)
            grads.update(g)
            dx += d
        order = parameter_shapes(cache.spec, cache.prefix)[0]
        return dx, {k: grads[k] for k in order}
    for c6, m6, c7, m7, c8 in cache.branches:
        d, g8 = conv1x1_backward(dy, c8)
        d = d if m7 is None else dropout_backward(d, m7)
        d, g7 = conv_relu_backward(d, c7)
        d = d if m6 is None else dropout_backward(d, m6)
        d, g6 = conv_relu_backward(d, c6)
        grads.update(g6 | g7 | g8)
        dx += d
    order = parameter_shapes(cache.spec, cache.prefix)[0]
    return dx, {k: grads[k] for k in order}


# ---------------------------------------------------------------------------------------------
# eval without caches


def aspp_infer(spec, params, buffers, x, prefix=""):
    """Eval ``aspp_forward`` without caches: x (N, in_channels, H, W) -> y (N, out_channels, H, W).
    The image pooling branch's 1x1 map is broadcast (what the bilinear resize of a 1x1 map is)."""
    _check_call("aspp_infer", spec, ASPP, params, buffers, x, False, prefix)
    N, _, H, W = x.shape
    outs = [conv_unit_infer(x, params, buffers, join(prefix, "convs.0"), 1, False)]
    for i, rate in enumerate(spec.atrous_rates, start=1):
        outs.append(conv_unit_infer(x, params, buffers, join(prefix, f"convs.{i}"), rate, spec.separable))
    if spec.image_pooling:
        g = conv_unit_infer(global_avg_pool(x), params, buffers, join(prefix, f"convs.{spec.pooling_index}"),
                            1, False, conv="1", bn="2")
        outs.append(np.broadcast_to(g, g.shape[:2] + (H, W)))
    return conv_unit_infer(np.concatenate(outs, axis=1), params, buffers, join(prefix, "project"), 1, False)


def aspp_l_infer(spec, params, buffers, x, prefix=""):
    """Eval ``aspp_l_forward`` without caches: x (N, in_channels, H, W) -> y (N, num_classes, H, W);
    each branch's last conv adds its logits to the running sum in its own pass."""
    _check_call("aspp_l_infer", spec, ASPPL, params, buffers, x, False, prefix)
    y = None
    for i, rate in enumerate(spec.atrous_rates):
        b = join(prefix, f"branches.{i}")
        if not spec.has_fc:
            w, bias = params[f"{b}.weight"], params[f"{b}.bias"]
            y = conv2d_fused(x, w, np.ones_like(bias), bias, rate, 1, "same", residual=y)
            continue
        h = conv_relu_infer(x, params, f"{b}.fc6", rate)
        h = conv_relu_infer(h, params, f"{b}.fc7", 1)
        y = conv1x1_infer(h, params, f"{b}.fc8", residual=y)
    return y


def aspp_l_as_one_conv(spec, params, prefix=""):
    """The ResNet form (fc_channels=None) as the one conv it is: a sum of linear 3x3 convs at rates r_i is
    a single conv (rate 1, "same" padding) whose (2 max(r) + 1)^2 kernel holds each branch's 9 weights at
    offsets (-r_i, 0, r_i) from the centre (the centres add up), bias the sum of the biases.
    -> (weight (num_classes, in_channels, K, K), bias (num_classes,)); (6, 12, 18, 24) gives K = 49 with
    1 + 8 * 4 = 33 non-zero taps."""
    fn = "aspp_l_as_one_conv"
    _check_spec(fn, spec, ASPPL)
    if spec.has_fc:
        raise ValueError(f"{fn}: spec has fc_channels={spec.fc_channels}: fc6-fc7-fc8 with ReLUs is not one conv; "
                         f"only the ResNet form (fc_channels=None) is linear")
    first = params.get(join(prefix, "branches.0.weight")) if isinstance(params, dict) else None
    dtype = first.dtype if isinstance(first, np.ndarray) else np.float64
    check_subset(fn, repr(spec) + (f" below {prefix!r}" if prefix else ""), *parameter_shapes(spec, prefix),
                 params, {}, dtype, prefix)
    R = max(spec.atrous_rates)
    first = params[join(prefix, "branches.0.weight")]
    weight = np.zeros(first.shape[:2] + (2 * R + 1, 2 * R + 1), dtype=first.dtype)
    bias = np.zeros(first.shape[:1], dtype=first.dtype)
    for i, r in enumerate(spec.atrous_rates):
        b = join(prefix, f"branches.{i}")
        weight[:, :, R - r:R + r + 1:r, R - r:R + r + 1:r] += params[f"{b}.weight"]
        bias += params[f"{b}.bias"]
    return weight, bias
