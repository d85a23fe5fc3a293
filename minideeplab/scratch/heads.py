"""The heads of the DeepLab family from scratch, forward and backward: one ``Unit`` per head spec
(``minideeplab.specs.heads``, and ``specs.aspp``'s ASPP and ASPP-L), each four functions with one signature:

    shapes(spec, prefix) -> (params, buffers)              name -> shape, the twin's state_dict order
    forward(spec, params, buffers, xs, training, rng, prefix, fn) -> (y, cache)
    backward(dy, cache) -> (dxs, grads)                     dxs: one gradient per input, grads keyed like params
    infer(spec, params, buffers, xs, prefix) -> y          eval without caches
    init(spec, prefix, dtype) -> {name: array}             (optional) initial values that are not the usual
                                                            conv / BN init (the CRF head's weights and Potts)

``xs`` is the tuple of the step's inputs (one array, or the decoder's (aspp, low_level), LR-ASPP's (low, out),
the CRF's (scores, input)), NCHW; a backward's dxs may hold None for an input it gives no gradient (the CRF's
image); ``prefix`` the step's module name (its parameters' state_dict prefix); ``fn`` names the public function
called, for errors.
A cache's ``masks`` are the dropout masks it drew, by the twin's module names. The PyTorch twins are in
``minideeplab.reference.heads``; ``minideeplab.scratch.deeplab`` composes them with a backbone.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from minideeplab.scratch import aspp as _aspp
from minideeplab.scratch import crf as _crf
from minideeplab.scratch.atrous import atrous_conv2d, atrous_conv2d_backward
from minideeplab.scratch.layers import (concat, concat_backward, dropout_backward, global_avg_pool,
                                        global_avg_pool_backward, resize_bilinear, resize_bilinear_backward,
                                        resize_bilinear_infer, sigmoid, sigmoid_backward)
from minideeplab.scratch.params import conv_unit_shapes, join
from minideeplab.scratch.units import (conv1x1_backward, conv1x1_forward, conv1x1_infer, conv_unit_backward,
                                       conv_unit_forward, conv_unit_infer, maybe_dropout)
from minideeplab.specs.aspp import ASPP, ASPPL
from minideeplab.scratch.attention import linear, linear_backward
from minideeplab.specs.heads import (Classifier, CRFHead, DeepLabHead, Decoder, FCNHead, LargeFOVHead, LRASPPHead,
                                     SegFormerHead)

__all__ = ["Unit", "HeadCache", "HEADS", "ASPP_UNIT", "ASPPL_UNIT", "LARGE_FOV", "DEEPLAB_HEAD", "FCN_HEAD", "DECODER",
           "CLASSIFIER", "LRASPP", "SEGFORMER_HEAD", "CRF", "input_rgb"]


class Unit(NamedTuple):
    """A head's four functions (see the module's docstring)."""

    shapes: Callable
    forward: Callable
    backward: Callable
    infer: Callable
    init: Callable | None = None


class HeadCache(NamedTuple):
    """What a head's backward needs: its parts' caches by name, and the dropout masks it drew."""

    parts: dict
    masks: dict


def _conv1x1_shapes(params, name, cin, cout):
    params[f"{name}.weight"], params[f"{name}.bias"] = (cout, cin, 1, 1), (cout,)


def _undropout(dh, mask):
    return dh if mask is None else dropout_backward(dh, mask)


def _masks(name, mask) -> dict:
    """The cache's ``masks``: {the twin's dropout name: mask}, empty when no dropout ran."""
    return {} if mask is None else {name: mask}


# ---------------------------------------------------------------------------------------------
# ASPP (v3, v3+) and ASPP-L (v2): the functions of ``scratch.aspp``, in the Unit signature


def _aspp_forward(spec, params, buffers, xs, training, rng, prefix, fn):
    return _aspp.aspp_forward(spec, params, buffers, xs[0], training, rng, prefix)


def _aspp_backward(dy, cache):
    dx, grads = _aspp.aspp_backward(dy, cache)
    return (dx,), grads


def _aspp_infer(spec, params, buffers, xs, prefix):
    return _aspp.aspp_infer(spec, params, buffers, xs[0], prefix)


def _aspp_l_forward(spec, params, buffers, xs, training, rng, prefix, fn):
    return _aspp.aspp_l_forward(spec, params, {}, xs[0], training, rng, prefix)  # ASPP-L has no buffers


def _aspp_l_backward(dy, cache):
    dx, grads = _aspp.aspp_l_backward(dy, cache)
    return (dx,), grads


def _aspp_l_infer(spec, params, buffers, xs, prefix):
    return _aspp.aspp_l_infer(spec, params, {}, xs[0], prefix)


ASPP_UNIT = Unit(_aspp.parameter_shapes, _aspp_forward, _aspp_backward, _aspp_infer)
ASPPL_UNIT = Unit(_aspp.parameter_shapes, _aspp_l_forward, _aspp_l_backward, _aspp_l_infer)


# ---------------------------------------------------------------------------------------------
# v1: LargeFOV's classifier, drop7 -> fc8


def large_fov_shapes(spec: LargeFOVHead, prefix):
    params = {}
    _conv1x1_shapes(params, join(prefix, "fc8"), spec.in_channels, spec.num_classes)
    return params, {}


def large_fov_forward(spec, params, buffers, xs, training, rng, prefix, fn):
    h, mask = maybe_dropout(xs[0], spec.dropout, training, rng, fn)
    s, c = conv1x1_forward(h, params, join(prefix, "fc8"))
    return s, HeadCache({"fc8": c, "drop7": mask}, _masks(join(prefix, "drop7"), mask))


def large_fov_backward(ds, cache):
    dh, grads = conv1x1_backward(ds, cache.parts["fc8"])
    return (_undropout(dh, cache.parts["drop7"]),), grads


def large_fov_infer(spec, params, buffers, xs, prefix):
    return conv1x1_infer(xs[0], params, join(prefix, "fc8"))


LARGE_FOV = Unit(large_fov_shapes, large_fov_forward, large_fov_backward, large_fov_infer)


# ---------------------------------------------------------------------------------------------
# v3: torchvision's DeepLabHead, ASPP (.0) -> 3x3 conv (.1), BN (.2), ReLU -> 1x1 (.4)


def deeplab_head_shapes(spec: DeepLabHead, prefix):
    params, buffers = _aspp.parameter_shapes(spec.aspp, join(prefix, "0"))
    a = spec.aspp.out_channels
    conv_unit_shapes(params, buffers, prefix, a, a, 3, conv="1", bn="2")
    _conv1x1_shapes(params, join(prefix, "4"), a, spec.num_classes)
    return params, buffers


def deeplab_head_forward(spec, params, buffers, xs, training, rng, prefix, fn):
    a, c_aspp = _aspp.aspp_forward(spec.aspp, params, buffers, xs[0], training, rng, join(prefix, "0"))
    h, c_conv = conv_unit_forward(a, params, buffers, prefix, 1, False, training, conv="1", bn="2")
    s, c_cls = conv1x1_forward(h, params, join(prefix, "4"))
    return s, HeadCache({"aspp": c_aspp, "conv": c_conv, "classifier": c_cls}, c_aspp.masks)


def deeplab_head_backward(ds, cache):
    c = cache.parts
    grads = {}
    dh, g = conv1x1_backward(ds, c["classifier"])
    grads.update(g)
    dh, g = conv_unit_backward(dh, c["conv"])
    grads.update(g)
    dx, g = _aspp.aspp_backward(dh, c["aspp"])
    grads.update(g)
    return (dx,), grads


def deeplab_head_infer(spec, params, buffers, xs, prefix):
    a = _aspp.aspp_infer(spec.aspp, params, buffers, xs[0], join(prefix, "0"))
    h = conv_unit_infer(a, params, buffers, prefix, 1, False, conv="1", bn="2")
    return conv1x1_infer(h, params, join(prefix, "4"))


DEEPLAB_HEAD = Unit(deeplab_head_shapes, deeplab_head_forward, deeplab_head_backward, deeplab_head_infer)


# ---------------------------------------------------------------------------------------------
# v3's auxiliary head: torchvision's FCNHead, 3x3 conv (.0), BN (.1), ReLU, dropout (.3), 1x1 (.4)


def fcn_head_shapes(spec: FCNHead, prefix):
    params, buffers = {}, {}
    conv_unit_shapes(params, buffers, prefix, spec.in_channels, spec.channels, 3)
    _conv1x1_shapes(params, join(prefix, "4"), spec.channels, spec.num_classes)
    return params, buffers


def fcn_head_forward(spec, params, buffers, xs, training, rng, prefix, fn):
    h, c_conv = conv_unit_forward(xs[0], params, buffers, prefix, 1, False, training)
    h, mask = maybe_dropout(h, spec.dropout, training, rng, fn)
    s, c_cls = conv1x1_forward(h, params, join(prefix, "4"))
    return s, HeadCache({"conv": c_conv, "dropout": mask, "classifier": c_cls}, _masks(join(prefix, "3"), mask))


def fcn_head_backward(ds, cache):
    c = cache.parts
    dh, grads = conv1x1_backward(ds, c["classifier"])
    dh = _undropout(dh, c["dropout"])
    dx, g = conv_unit_backward(dh, c["conv"])
    grads.update(g)
    return (dx,), grads


def fcn_head_infer(spec, params, buffers, xs, prefix):
    h = conv_unit_infer(xs[0], params, buffers, prefix, 1, False)
    return conv1x1_infer(h, params, join(prefix, "4"))


FCN_HEAD = Unit(fcn_head_shapes, fcn_head_forward, fcn_head_backward, fcn_head_infer)


# ---------------------------------------------------------------------------------------------
# v3+'s decoder: (aspp, low_level) -> (aspp_conv ->) upsample, concat with low_level's projection -> fuse


def decoder_shapes(spec: Decoder, prefix):
    params, buffers = {}, {}
    a, low, d, sep = spec.aspp_channels, spec.low_level_channels, spec.channels, spec.separable
    if spec.aspp_conv:
        conv_unit_shapes(params, buffers, join(prefix, "aspp_conv"), a, a, 3, sep)
    conv_unit_shapes(params, buffers, join(prefix, "low_level"), spec.low_level_in, low, 1)
    for i in range(spec.n_fuse):
        conv_unit_shapes(params, buffers, join(prefix, f"fuse.{i}"), d if i else a + low, d, 3, sep)
    return params, buffers


def decoder_forward(spec, params, buffers, xs, training, rng, prefix, fn):
    a, low = xs
    sep, parts = spec.separable, {"spec": spec}
    if spec.aspp_conv:
        a, parts["aspp_conv"] = conv_unit_forward(a, params, buffers, join(prefix, "aspp_conv"), 1, sep, training)
    parts["aspp_shape"] = a.shape
    up = resize_bilinear(a, low.shape[2:], spec.align_corners)
    p, parts["low_level"] = conv_unit_forward(low, params, buffers, join(prefix, "low_level"), 1, False, training)
    h = concat([up, p])
    for i in range(spec.n_fuse):
        h, parts[f"fuse.{i}"] = conv_unit_forward(h, params, buffers, join(prefix, f"fuse.{i}"), 1, sep, training)
    return h, HeadCache(parts, {})


def decoder_backward(dy, cache):
    c, grads = cache.parts, {}
    spec, dh = c["spec"], dy
    for i in reversed(range(spec.n_fuse)):
        dh, g = conv_unit_backward(dh, c[f"fuse.{i}"])
        grads.update(g)
    d_up, d_proj = concat_backward(dh, [spec.aspp_channels, spec.low_level_channels])
    d_low, g = conv_unit_backward(d_proj, c["low_level"])
    grads.update(g)
    da = resize_bilinear_backward(d_up, c["aspp_shape"], spec.align_corners)
    if spec.aspp_conv:
        da, g = conv_unit_backward(da, c["aspp_conv"])
        grads.update(g)
    return (da, d_low), grads


def decoder_infer(spec, params, buffers, xs, prefix):
    a, low = xs
    sep = spec.separable
    if spec.aspp_conv:
        a = conv_unit_infer(a, params, buffers, join(prefix, "aspp_conv"), 1, sep)
    up = resize_bilinear_infer(a, low.shape[2:], spec.align_corners)
    h = np.concatenate([up, conv_unit_infer(low, params, buffers, join(prefix, "low_level"), 1, False)], axis=1)
    for i in range(spec.n_fuse):
        h = conv_unit_infer(h, params, buffers, join(prefix, f"fuse.{i}"), 1, sep)
    return h


DECODER = Unit(decoder_shapes, decoder_forward, decoder_backward, decoder_infer)


# ---------------------------------------------------------------------------------------------
# a 1x1 conv with bias to the classes (v3+'s classifier)


def classifier_shapes(spec: Classifier, prefix):
    params = {}
    _conv1x1_shapes(params, prefix, spec.in_channels, spec.num_classes)
    return params, {}


def classifier_forward(spec, params, buffers, xs, training, rng, prefix, fn):
    s, c = conv1x1_forward(xs[0], params, prefix)
    return s, HeadCache({"conv": c}, {})


def classifier_backward(ds, cache):
    dx, grads = conv1x1_backward(ds, cache.parts["conv"])
    return (dx,), grads


def classifier_infer(spec, params, buffers, xs, prefix):
    return conv1x1_infer(xs[0], params, prefix)


CLASSIFIER = Unit(classifier_shapes, classifier_forward, classifier_backward, classifier_infer)


# ---------------------------------------------------------------------------------------------
# LR-ASPP (MobileNetV3): (low, high) -> low_classifier(low) + high_classifier(up(cbr(high) * scale(high)))


def lraspp_shapes(spec: LRASPPHead, prefix):
    params, buffers = {}, {}
    conv_unit_shapes(params, buffers, join(prefix, "cbr"), spec.high_channels, spec.inter_channels, 1)
    params[f"{join(prefix, 'scale')}.1.weight"] = (spec.inter_channels, spec.high_channels, 1, 1)
    _conv1x1_shapes(params, join(prefix, "low_classifier"), spec.low_channels, spec.num_classes)
    _conv1x1_shapes(params, join(prefix, "high_classifier"), spec.inter_channels, spec.num_classes)
    return params, buffers


def _lraspp_gate(params, high, prefix):
    """scale(high): sigmoid(1x1 conv (no bias) of the global average pool) -> (pooled, its weight, the gate
    (N, inter, 1, 1))."""
    pooled, w = global_avg_pool(high), params[f"{join(prefix, 'scale')}.1.weight"]
    return pooled, w, sigmoid(atrous_conv2d(pooled, w, None, 1, 1, 0))


def lraspp_forward(spec, params, buffers, xs, training, rng, prefix, fn):
    low, high = xs
    f, c_cbr = conv_unit_forward(high, params, buffers, join(prefix, "cbr"), 1, False, training)
    pooled, w, gate = _lraspp_gate(params, high, prefix)
    g = f * gate
    up = resize_bilinear(g, low.shape[2:], spec.align_corners)
    s_low, c_low = conv1x1_forward(low, params, join(prefix, "low_classifier"))
    s_high, c_high = conv1x1_forward(up, params, join(prefix, "high_classifier"))
    parts = {"spec": spec, "scale": join(prefix, "scale"), "cbr": c_cbr, "f": f, "high_shape": high.shape,
             "pooled": pooled, "w": w, "gate": gate, "g_shape": g.shape, "low_classifier": c_low,
             "high_classifier": c_high}
    return s_low + s_high, HeadCache(parts, {})


def lraspp_backward(ds, cache):
    c = cache.parts
    d_low, grads = conv1x1_backward(ds, c["low_classifier"])
    d_up, g = conv1x1_backward(ds, c["high_classifier"])
    grads.update(g)
    dg = resize_bilinear_backward(d_up, c["g_shape"], c["spec"].align_corners)
    d_high, g = conv_unit_backward(dg * c["gate"], c["cbr"])  # high through cbr ...
    grads.update(g)
    dz = sigmoid_backward((dg * c["f"]).sum(axis=(2, 3), keepdims=True), c["gate"])  # ... and through the gate
    dpooled, grads[f"{c['scale']}.1.weight"], _ = atrous_conv2d_backward(dz, c["pooled"], c["w"], 1, 1, 0)
    d_high = d_high + global_avg_pool_backward(dpooled, c["high_shape"])
    return (d_low, d_high), grads


def lraspp_infer(spec, params, buffers, xs, prefix):
    low, high = xs
    f = conv_unit_infer(high, params, buffers, join(prefix, "cbr"), 1, False)
    f *= _lraspp_gate(params, high, prefix)[2]
    up = resize_bilinear_infer(f, low.shape[2:], spec.align_corners)
    return conv1x1_infer(up, params, join(prefix, "high_classifier"),
                         residual=conv1x1_infer(low, params, join(prefix, "low_classifier")))


LRASPP = Unit(lraspp_shapes, lraspp_forward, lraspp_backward, lraspp_infer)


# ---------------------------------------------------------------------------------------------
# the dense CRF as the last layer (CRF-as-RNN): (scores, input) -> log Q at the input's size


def crf_shapes(spec: CRFHead, prefix):
    C = spec.num_classes
    return {join(prefix, "log_pos_w"): (), join(prefix, "log_bi_w"): (), join(prefix, "compat"): (C, C)}, {}


def crf_init(spec: CRFHead, prefix, dtype):
    """log(pos_w), log(bi_w) and Potts (1 - I), the twin's (``reference.crf.CRFLayer``) initial values."""
    return {join(prefix, "log_pos_w"): np.array(np.log(spec.pos_w), dtype),
            join(prefix, "log_bi_w"): np.array(np.log(spec.bi_w), dtype),
            join(prefix, "compat"): (1.0 - np.eye(spec.num_classes)).astype(dtype)}


def input_rgb(spec: CRFHead, x) -> np.ndarray:
    """The RGB colours of a normalised input: x (N, 3, H, W) -> (N, H, W, 3) uint8, round(255 (x * std + mean))
    clipped to 0..255 (computed in float64: exact for inputs that were uint8 colours)."""
    mean, std = np.asarray(spec.mean).reshape(3, 1, 1), np.asarray(spec.std).reshape(3, 1, 1)
    rgb = np.rint(255.0 * (x.astype(np.float64) * std + mean))
    return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


def _crf_run(spec, params, xs, prefix):
    scores, x = xs
    size = x.shape[2:]
    up = scores if scores.shape[2:] == size else resize_bilinear(scores, size, spec.align_corners)
    w = {k: np.exp(np.float64(params[join(prefix, f"log_{k}")])) for k in ("pos_w", "bi_w")}
    q, cache = _crf.mean_field(np.ascontiguousarray(up), input_rgb(spec, x), spec.n_iters, w["pos_w"],
                               spec.pos_xy_std, w["bi_w"], spec.bi_xy_std, spec.bi_rgb_std, spec.method,
                               params[join(prefix, "compat")], spec.normalization, spec.window)
    tiny = np.finfo(q.dtype).tiny
    return np.log(np.maximum(q, tiny)), q, w, cache, scores.shape


def crf_forward(spec, params, buffers, xs, training, rng, prefix, fn):
    logq, q, w, cache, shape = _crf_run(spec, params, xs, prefix)
    return logq, HeadCache({"spec": spec, "prefix": prefix, "q": q, "w": w, "mean_field": cache,
                            "scores_shape": shape}, {})


def crf_backward(dy, cache):
    """log Q's gradient -> (dscores, None): no gradient for the image, as CRF-as-RNN; the weights' through
    their logs (d/dlog w = w d/dw)."""
    c = cache.parts
    spec, prefix, q = c["spec"], c["prefix"], c["q"]
    dq = np.where(q >= np.finfo(q.dtype).tiny, dy / np.maximum(q, np.finfo(q.dtype).tiny), 0).astype(q.dtype)
    g = _crf.mean_field_backward(dq, c["mean_field"])
    grads = {join(prefix, f"log_{k}"): np.array(g[k] * c["w"][k], q.dtype) for k in ("pos_w", "bi_w")}
    grads[join(prefix, "compat")] = g["compat"].astype(q.dtype)
    shape, ds = c["scores_shape"], g["logits"]
    if shape[2:] != ds.shape[2:]:
        ds = resize_bilinear_backward(ds, shape, spec.align_corners)
    return (ds, None), grads


def crf_infer(spec, params, buffers, xs, prefix):
    return _crf_run(spec, params, xs, prefix)[0]


CRF = Unit(crf_shapes, crf_forward, crf_backward, crf_infer, crf_init)


# ---------------------------------------------------------------------------------------------
# SegFormer's all-MLP decoder: each stage -> linear -> resize to stride 4 -> concat (last first) -> 1x1 conv, BN, ReLU


def segformer_head_shapes(spec: SegFormerHead, prefix):
    params, buffers, E = {}, {}, spec.channels
    for j, c in enumerate(reversed(spec.in_channels)):
        lin = join(prefix, f"mlp_stage.{j}.linear")
        params[f"{lin}.weight"], params[f"{lin}.bias"] = (E, c), (E,)
    conv_unit_shapes(params, buffers, join(prefix, "fuse_stage"), 4 * E, E, 1)
    return params, buffers


def _stage_linear(params, prefix, j, m):
    """A (B, C, h, w) map through stage j's linear layer -> (B, E, h, w)."""
    lin = join(prefix, f"mlp_stage.{j}.linear")
    B, C, h, w = m.shape
    t = m.reshape(B, C, -1).transpose(0, 2, 1)
    e = linear(t, params[f"{lin}.weight"], params[f"{lin}.bias"])
    return np.ascontiguousarray(e.transpose(0, 2, 1)).reshape(B, -1, h, w), t


def segformer_head_forward(spec, params, buffers, xs, training, rng, prefix, fn):
    size, parts, ups = xs[0].shape[2:], {"prefix": prefix, "spec": spec}, []
    for j, m in enumerate(reversed(xs)):
        e, parts[f"tokens.{j}"] = _stage_linear(params, prefix, j, m)
        parts[f"shape.{j}"], parts[f"weight.{j}"] = e.shape, params[f"{join(prefix, f'mlp_stage.{j}.linear')}.weight"]
        ups.append(resize_bilinear(e, size, False) if e.shape[2:] != size else e)
    y, parts["fuse"] = conv_unit_forward(concat(ups), params, buffers, join(prefix, "fuse_stage"), 1, False, training)
    return y, HeadCache(parts, {})


def segformer_head_backward(dy, cache):
    c = cache.parts
    prefix, E = c["prefix"], c["spec"].channels
    dcat, grads = conv_unit_backward(dy, c["fuse"])
    dxs = []
    for j, dup in enumerate(concat_backward(dcat, [E] * 4)):
        shape = c[f"shape.{j}"]
        de = resize_bilinear_backward(dup, shape, False) if dup.shape != shape else dup
        B, _, h, w = shape
        lin = join(prefix, f"mlp_stage.{j}.linear")
        dt, grads[f"{lin}.weight"], grads[f"{lin}.bias"] = linear_backward(
            de.reshape(B, E, -1).transpose(0, 2, 1), c[f"tokens.{j}"], c[f"weight.{j}"])
        dxs.append(np.ascontiguousarray(dt.transpose(0, 2, 1)).reshape(B, -1, h, w))
    return tuple(reversed(dxs)), grads


def segformer_head_infer(spec, params, buffers, xs, prefix):
    size, ups = xs[0].shape[2:], []
    for j, m in enumerate(reversed(xs)):
        e = _stage_linear(params, prefix, j, m)[0]
        ups.append(resize_bilinear_infer(e, size, False) if e.shape[2:] != size else e)
    return conv_unit_infer(np.concatenate(ups, axis=1), params, buffers, join(prefix, "fuse_stage"), 1, False)


SEGFORMER_HEAD = Unit(segformer_head_shapes, segformer_head_forward, segformer_head_backward, segformer_head_infer)


# the registry: a head spec's type -> its unit (a new head: its spec, its unit here, its twin, one line each)
HEADS = {ASPP: ASPP_UNIT, ASPPL: ASPPL_UNIT, LargeFOVHead: LARGE_FOV, DeepLabHead: DEEPLAB_HEAD, FCNHead: FCN_HEAD,
         Decoder: DECODER, Classifier: CLASSIFIER, LRASPPHead: LRASPP, SegFormerHead: SEGFORMER_HEAD, CRFHead: CRF}
