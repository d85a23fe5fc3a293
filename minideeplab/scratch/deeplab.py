"""The DeepLab family from scratch, forward and backward: v1 (LargeFOV), v2 (ASPP-L), v3 (ASPP) and
v3+ (ASPP + decoder), and MobileNetV3's LR-ASPP beside them, each a backbone plus heads, run by one generic
forward, backward and infer.

A ``DeepLabConfig`` (``minideeplab.specs.deeplab``, re-exported here) names a model with the papers' words
(``output_stride``, ``atrous_rates``, ``image_pooling``, ``multi_grid`` in the backbone spec, ``low_level``...)
and says what it is made of: ``config.trunk``, the backbone spec, and ``config.steps``, the heads after it
(``specs.heads.Step``: a module name, a head spec, the features it reads, the one it writes). Here:

    backbone   ``backbone.backbone_forward / _backward / _infer`` of the trunk: features {"low_level",
               "out", ResNet: "layer3"}
    heads      ``heads.HEADS[type(step.spec)]``, one Unit (shapes, forward, backward, infer) per head spec
    model      ``model_forward`` runs the backbone, then each step on the features so far, then resizes
               the "scores" (and, training v3 with aux, the "aux" scores) to the input; ``model_backward``
               runs the steps in reverse, summing the gradient of a feature read twice, then the backbone.

``build_model(name, ...)`` makes a model with fresh weights; ``DeepLab`` holds config, params and buffers
and runs ``forward(x) -> (logits, cache)`` / ``backward(dlogits, cache) -> grads``. In eval mode
``model(x)`` runs ``model_infer``: the same logits as ``forward`` (up to float rounding) without building
the backward's caches, each conv's batch norm, ReLU and residual sum done in one in-place pass after it.

Parameter names (flat dicts, as ``backbone``; the reference twin's ``state_dict`` keys):

    backbone.*                  the backbone's torchvision names (``backbone.layer4.2.conv3.weight``,
                                ``backbone.features.0.weight``, ``backbone.fc6.weight``)
    v1  classifier.fc8.*        (dropout ``classifier.drop7``)
    v2  classifier.branches.{i}.weight/.bias           ResNet form: 3x3 conv at rate i (Caffe's fc1_voc12_c{i})
        classifier.branches.{i}.fc6/fc7/fc8.*          VGG form (see ``aspp.ASPPL``)
    v3  classifier.0.*          the ASPP, torchvision's names (``aspp.ASPP``)
        classifier.1.weight     3x3 conv 256 -> 256, no bias
        classifier.2.*          BN
        classifier.4.*          1x1 conv 256 -> classes, with bias
        aux_classifier.0.weight 3x3 conv layer3 -> layer3 / 4 (1024 -> 256), no bias   (aux=True only)
        aux_classifier.1.*      BN;   .3 dropout 0.1;   aux_classifier.4.* 1x1 to the classes, with bias
      = ``torchvision.models.segmentation.deeplabv3_resnet50(num_classes=21, aux_loss=...)``'s state_dict
        on MobileNetV3-Large: backbone.0 .. backbone.16 (``specs.mobilenet``), the same head names, the
        aux head on features[4] (40 -> 10 channels) = ``deeplabv3_mobilenet_v3_large``'s state_dict
    lraspp classifier.cbr.0.weight, classifier.cbr.1.*      1x1 conv 960 -> 128 + BN (then ReLU)
        classifier.scale.1.weight                            1x1 conv 960 -> 128 on the global pool (then sigmoid)
        classifier.low_classifier.*, classifier.high_classifier.*   1x1 convs with bias to the classes
      = ``torchvision.models.segmentation.lraspp_mobilenet_v3_large``'s state_dict
    v3plus aspp.*               the ASPP, same names as v3's classifier.0 (smp: decoder.aspp.0.*)
        decoder.low_level.0.weight, decoder.low_level.1.*   1x1 projection of low_level to 48 + BN
        decoder.fuse.{0,1}.0.weight, decoder.fuse.{0,1}.1.* the two 3x3 convs + BN
                                (separable: .0.0 depthwise, .0.1 pointwise, as smp's SeparableConv2d)
        classifier.weight, classifier.bias                   1x1 to the classes
      These v3+ names are ours; ``minideeplab.interop`` maps smp's onto them.
    v3plus, decoder_layout="smp" (segmentation_models_pytorch's ``DeepLabV3Plus``, whose structure differs):
        aspp.*                                  the ASPP (smp: decoder.aspp.0.*)
        decoder.aspp_conv.0.weight, .1.*        a 3x3 conv + BN + ReLU on the ASPP output, BEFORE the
                                                upsampling (separable: .0.0/.0.1; smp: decoder.aspp.1, .2)
        decoder.low_level.*                     as above (smp: decoder.block1)
        decoder.fuse.0.*                        ONE 3x3 conv + BN + ReLU after the concat (smp: decoder.block2)
        classifier.weight, classifier.bias      (smp: segmentation_head.0)
    v3, decoder_layout="smp" (smp's ``DeepLabV3``): torchvision's structure and names (smp: decoder.aspp,
        decoder.conv, decoder.bn, segmentation_head.0); only the input rule differs (below).
    decoder_layout="smp" also takes smp's input rule: H and W must be multiples of the output stride (its
    upsamplings are scale factors, and it refuses other sizes).

    any model, crf=... (the CRF as the last layer, ``specs.heads.CRFHead``):
        crf.log_pos_w, crf.log_bi_w     0-d: the logs of the two kernel weights (positive), log 3 and log 4
        crf.compat                      (classes, classes): the label compatibility, a penalty, from 1 - I
      (``reference.crf.CRFLayer``'s names). The head reads the scores and the input (step input "input"),
      returns log Q at the input's size; see ARCHITECTURE.md for how it gets the image's colours.

Bilinear resizing: ``align_corners`` (config) applies to the final resize of every model and to the v3+
decoder's upsampling of the ASPP output; default False (torchvision). The ASPP's image pooling branch
resizes a 1x1 map, the same either way. With align_corners=True, v3+ needs H and W of the form
k * output_stride (smp, whose x4 upsampling is a scale factor) or k * output_stride + 1 (TF DeepLab's
513: then every feature map's corner pixels sit exactly on the input's corners); other sizes are refused.
align_corners=False accepts any size (there feature i of a stride-s map, centred on input pixel i*s, is
resized as if it were centred on (i + 1/2) s - 1/2: a shift of (s - 1)/2 pixels, torchvision's choice).

Head widths: the papers' (ASPP 256, decoder 256, low_level projection 48) by default; ``make_config`` /
``build_model`` give the "mini" backbone, whose widths are ResNet-50's / 4, heads a quarter as wide (ASPP
64, decoder 64, low_level 12) unless the caller sets them. (v3's aux head is layer3's channels / 4 either
way; v2's ResNet-form head has no width of its own.)

Init (``init_model``, ``build_model``): torchvision's (Kaiming normal, fan-out) everywhere except the
class-score convs (``is_score_layer``), which get DeepLab's N(0, 0.01) weights and zero bias: a fresh
model's logits are then small and its loss starts near ln(num_classes).

Not here (noted for later): the paper's drop6 inside VGG-16 LargeFOV (the backbone has no dropout),
multi-scale inputs. The dense CRF as post-processing is ``crf.dense_crf``; as a trained layer, the option crf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from minideeplab.scratch.backbone import BACKBONES as BACKBONE_UNITS
from minideeplab.scratch.backbone import (BackboneCache, backbone_backward, backbone_forward,
                                          backbone_infer, check_image)
from minideeplab.scratch.backbone import parameter_shapes as backbone_parameter_shapes
from minideeplab.scratch.heads import HEADS
from minideeplab.scratch.layers import resize_bilinear, resize_bilinear_backward, resize_bilinear_infer
from minideeplab.scratch.optim import adamw_step, sgd_step
from minideeplab.scratch.params import check_subset, init_params, sub
from minideeplab.specs.checks import FLOAT_DTYPES, check_float_array
from minideeplab.specs.deeplab import (AUX_DROPOUT, MINI_HEAD, MODELS, SCORE_STD, V2_RATES, V3_RATES, DeepLabConfig,
                                       is_score_layer, make_config)

__all__ = ["MODELS", "DeepLabConfig", "make_config", "model_parameter_shapes", "is_score_layer",
           "init_model", "DeepLabCache", "model_forward", "model_backward", "model_infer", "DeepLab", "build_model",
           "sgd_step", "adamw_step", "AUX_DROPOUT", "MINI_HEAD", "SCORE_STD", "V2_RATES", "V3_RATES"]


# ---------------------------------------------------------------------------------------------
# parameters


def _check_config(fn, config):
    if not isinstance(config, DeepLabConfig):
        raise ValueError(f"{fn}: config must be a DeepLabConfig (make_config(...)), got {type(config).__name__}")


def model_parameter_shapes(config) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in the reference twin's state_dict order (see the module's
    docstring for the names): the backbone's below ``backbone.``, then each step's below its name."""
    _check_config("model_parameter_shapes", config)
    bp, bb = backbone_parameter_shapes(config.trunk)
    params = {f"backbone.{k}": v for k, v in bp.items()}
    buffers = {f"backbone.{k}": v for k, v in bb.items()}
    for step in config.steps:
        p, b = HEADS[type(step.spec)].shapes(step.spec, step.name)
        params.update(p)
        buffers.update(b)
    return params, buffers


def _score_std(shapes) -> dict:
    return {k: SCORE_STD for k in shapes if k.endswith(".weight") and is_score_layer(k[:-len(".weight")])}


def init_model(config, rng, dtype=np.float32) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fresh (params, buffers): conv weights Kaiming normal (fan-out), biases 0, BN 1 / 0, running
    statistics 0 / 1 (as ``init_backbone``; the backbone's draws come first), except the class-score
    convs (``is_score_layer``): N(0, 0.01) weights, zero bias, as DeepLab's released Caffe and TF models
    initialise them. Why: with Kaiming there the logits are as large as the features and a fresh model's
    loss is far above ln(num_classes) (7 classes, mini backbone, first training step: v3 and v3+ 6 to 9,
    v2 about 17, instead of ln 7 = 1.95); small scores start the training from nearly the uniform
    prediction (v1, v3, v3+ within 0.01 of ln C; v2's ResNet form, four 3x3 convs summed over the
    backbone's un-normalised features, 0.1 to 0.3 above)."""
    _check_config("init_model", config)
    shapes, buffer_shapes = model_parameter_shapes(config)
    params, buffers = init_params(shapes, buffer_shapes, rng, dtype, "init_model", _score_std(shapes))
    return _init_heads(config, params, dtype), buffers


def _init_heads(config, params, dtype):
    """The heads' own initial values (``Unit.init``: the CRF head's kernel weights and Potts), over params."""
    for step in config.steps:
        init = HEADS[type(step.spec)].init
        if init is not None:
            params.update(init(step.spec, step.name, dtype))
    return params


# ---------------------------------------------------------------------------------------------
# forward and backward


class DeepLabCache(NamedTuple):
    """What ``model_backward`` needs, and what a training forward produced besides the logits."""

    config: DeepLabConfig
    backbone: BackboneCache
    head: dict                       # step name -> its unit's cache
    shapes: dict                     # "x", every feature ("low_level", "out", "aspp", ...), "small" (the scores)
    aux: np.ndarray | None           # the aux head's logits (N, classes, H, W): v3 with aux=True, training
    dtype: np.dtype

    @property
    def masks(self) -> dict:
        """{dropout module name (the twin's): mask} of every dropout that ran (none in eval)."""
        out = {}
        for c in self.head.values():
            out.update(c.masks)
        return out


def _check_input(fn, config, params, buffers, x, training):
    _check_config(fn, config)
    N, C, H, W = check_image(fn, x, training, config.output_stride, config.describe())
    os_, decoder = config.output_stride, config.decoder
    if config.decoder_layout == "smp" and (H % os_ or W % os_):
        def up(s):
            return ", ".join(str(v) for v in sorted({s - s % os_, s - s % os_ + os_}) if v >= os_)
        raise ValueError(f"{fn}: x has shape {x.shape}, but {config.describe()} with decoder_layout='smp' needs H "
                         f"and W divisible by {os_} (smp's rule: its upsamplings are scale factors); nearest: "
                         f"H in {up(H)}, W in {up(W)} (pad the image)")
    if decoder is not None and decoder.align_corners and (H % os_ > 1 or W % os_ > 1):
        def near(s):
            return ", ".join(str(v) for v in sorted({s - s % os_, s - s % os_ + 1, s - s % os_ + os_}) if v >= os_)
        raise ValueError(f"{fn}: x has shape {x.shape}, but {config.describe()} with align_corners=True needs H "
                         f"and W = k * {os_} (smp) or k * {os_} + 1 (TF DeepLab), so that the decoder's feature maps "
                         f"line up; nearest: H in {near(H)}, W in {near(W)} (or align_corners=False, any size)")
    if training:
        hw = -(-H // os_) * -(-W // os_)
        if BACKBONE_UNITS[type(config.trunk)].batch_norm and N * hw < 2:
            raise ValueError(f"{fn}: x has shape {x.shape}, which gives a {-(-H // os_)}x{-(-W // os_)} last stage: "
                             f"training (batch norm) needs N * H_out * W_out >= 2")
        if N < 2 and any(a.image_pooling for a in config.aspps):
            raise ValueError(f"{fn}: x has shape {x.shape}: training with image_pooling needs N >= 2 (the pooled "
                             f"branch's batch norm sees one value per image and channel)")
    check_subset(fn, config.describe(), *model_parameter_shapes(config), params, buffers, x.dtype)


def model_forward(config, params, buffers, x, training, rng=None, _fn="model_forward"):
    """x (N, 3, H, W) -> (logits (N, num_classes, H, W), DeepLabCache).

    training: batch norm on batch statistics (updating the running ones in ``buffers`` in place), dropout
    on with masks drawn from ``rng`` (a ``np.random.Generator``; needed when dropout > 0), and the
    training-only steps run too (v3's aux head: its logits in ``cache.aux``). eval: running statistics, no
    dropout, no aux.
    """
    fn = _fn
    _check_input(fn, config, params, buffers, x, training)
    training = bool(training)
    H, W = x.shape[2:]
    ac = config.align_corners
    feats, bcache = backbone_forward(config.trunk, sub(params, "backbone"), sub(buffers, "backbone"), x, training)
    feats["input"] = x  # what a step may read besides the features (the CRF head: the image's colours)
    heads = {}
    for step in config.steps:
        if step.training_only and not training:
            continue
        xs = tuple(feats[i] for i in step.inputs)
        feats[step.output], heads[step.name] = HEADS[type(step.spec)].forward(step.spec, params, buffers, xs,
                                                                               training, rng, step.name, fn)
    shapes = {"x": x.shape} | {k: v.shape for k, v in feats.items()}
    shapes["small"] = shapes["scores"]
    aux = resize_bilinear(feats["aux"], (H, W), ac) if "aux" in feats else None
    logits = _to_input_size(resize_bilinear, feats["scores"], (H, W), ac)
    return logits, DeepLabCache(config, bcache, heads, shapes, aux, x.dtype)


def model_infer(config, params, buffers, x, _fn="model_infer"):
    """Eval ``model_forward`` without caches: x (N, 3, H, W) -> logits (N, num_classes, H, W), the same
    up to float rounding (batch norm on the running statistics folded into one pass after each conv, with
    the ReLU and any residual sum; no dropout, no aux head). Nothing is kept for a backward."""
    _check_input(_fn, config, params, buffers, x, False)
    feats = backbone_infer(config.trunk, sub(params, "backbone"), sub(buffers, "backbone"), x)
    feats["input"] = x
    for step in config.steps:
        if not step.training_only:
            feats[step.output] = HEADS[type(step.spec)].infer(step.spec, params, buffers,
                                                              tuple(feats[i] for i in step.inputs), step.name)
    return _to_input_size(resize_bilinear_infer, feats["scores"], x.shape[2:], config.align_corners)


def _to_input_size(resize, scores, size, align_corners):
    """The scores resized to the input; as they are when already that size (after the CRF head)."""
    return scores if scores.shape[2:] == tuple(size) else resize(scores, size, align_corners)


def _check_grad(fn, name, d, shape, dtype):
    check_float_array(fn, name, d)
    if d.dtype != dtype:
        raise ValueError(f"{fn}: {name} has dtype {d.dtype} but the forward's x had {dtype}")
    if d.shape != shape:
        raise ValueError(f"{fn}: {name} has shape {d.shape}, expected {shape} (the forward's {name[1:]})")


def model_backward(dlogits, cache, daux=None, _fn="model_backward"):
    """dlogits (N, num_classes, H, W) (and daux, the aux logits' gradient, for v3 with aux=True after a
    training forward) -> (dx (N, 3, H, W), grads), grads keyed and ordered like the params. Parameters the
    forward did not use (the aux head in eval, or without daux) get zero gradients."""
    fn = _fn
    if not isinstance(cache, DeepLabCache):
        raise ValueError(f"{fn}: cache must be the DeepLabCache returned by the forward, got {type(cache).__name__}")
    config, shapes, ac, dt = cache.config, cache.shapes, cache.config.align_corners, cache.dtype
    N, C = shapes["scores"][:2]
    _check_grad(fn, "dlogits", dlogits, (N, C) + shapes["x"][2:], dt)
    if daux is not None:
        if cache.aux is None:
            raise ValueError(f"{fn}: daux given, but the forward computed no aux logits (aux=True and training only)")
        _check_grad(fn, "daux", daux, cache.aux.shape, dt)

    same = shapes["scores"] == dlogits.shape  # the CRF head's scores are at the input's size already
    d = {"scores": dlogits if same else resize_bilinear_backward(dlogits, shapes["scores"], ac)}
    if daux is not None:
        d["aux"] = resize_bilinear_backward(daux, shapes["aux"], ac)
    grads = {}
    for step in reversed(config.steps):
        if step.name not in cache.head or step.output not in d:
            continue  # not run (eval), or nothing flows back into it (the aux head without daux)
        dxs, g = HEADS[type(step.spec)].backward(d.pop(step.output), cache.head[step.name])
        grads.update(g)
        for name, dx in zip(step.inputs, dxs):
            if dx is not None:  # None: no gradient for that input (the CRF's image)
                d[name] = dx if name not in d else d[name] + dx
    d_input = d.pop("input", None)
    dx, g = backbone_backward(config.trunk, d, cache.backbone)  # d now holds the backbone's features only
    dx = dx if d_input is None else dx + d_input
    grads.update({f"backbone.{k}": v for k, v in g.items()})
    order = model_parameter_shapes(config)[0]
    return dx, {k: grads[k] if k in grads else np.zeros(shape, dtype=dt) for k, shape in order.items()}


# ---------------------------------------------------------------------------------------------
# the model object


@dataclass
class DeepLab:
    """A DeepLab model: config, weights, mode.

    ``model(x)`` -> logits (N, num_classes, H, W) at the input's resolution; ``forward(x)`` -> (logits,
    cache); ``backward(dlogits, cache, daux=None)`` -> grads keyed like ``params``; ``train()`` / ``eval()``
    switch batch norm (batch or running statistics; training updates ``buffers`` in place), dropout
    (masks drawn from ``rng``) and the aux head. params and buffers: torchvision-style names (see the
    module's docstring), all float32 or all float64; x must have their dtype.
    """

    config: DeepLabConfig
    params: dict = field(repr=False)
    buffers: dict = field(repr=False)
    training: bool = False
    rng: np.random.Generator = field(default_factory=np.random.default_rng, repr=False)

    def __post_init__(self):
        fn = "DeepLab"
        _check_config(fn, self.config)
        if not isinstance(self.params, dict) or not self.params:
            raise ValueError(f"{fn}: params must be a non-empty dict of numpy arrays, got {type(self.params).__name__}")
        first = next(iter(self.params.values()))
        dtype = getattr(first, "dtype", None)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"{fn}: params must be float32 or float64 numpy arrays, got {dtype}")
        check_subset(fn, self.config.describe(), *model_parameter_shapes(self.config), self.params, self.buffers, dtype)
        if not isinstance(self.training, (bool, np.bool_)):
            raise ValueError(f"{fn}: training must be True or False, got {self.training!r}")
        if not isinstance(self.rng, np.random.Generator):
            raise ValueError(f"{fn}: rng must be a numpy.random.Generator, got {type(self.rng).__name__}")

    @property
    def dtype(self) -> np.dtype:
        return next(iter(self.params.values())).dtype

    def __call__(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes, H, W). Eval: ``model_infer`` (no caches kept);
        training: ``forward``'s logits (batch statistics, dropout)."""
        if self.training:
            return self.forward(x)[0]
        return model_infer(self.config, self.params, self.buffers, x, "DeepLab.forward")

    def forward(self, x):
        """x (N, 3, H, W) -> (logits (N, num_classes, H, W), DeepLabCache); cache.aux: the aux logits."""
        return model_forward(self.config, self.params, self.buffers, x, self.training, self.rng, "DeepLab.forward")

    def backward(self, dlogits, cache, daux=None):
        """dlogits (and daux) -> grads, keyed and ordered like params."""
        return model_backward(dlogits, cache, daux, "DeepLab.backward")[1]

    def train(self, mode=True):
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"DeepLab.train: mode must be True or False, got {mode!r}")
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)


def build_model(name, backbone=None, output_stride=None, num_classes=21, *, rng=None, dtype=np.float32,
                **options) -> DeepLab:
    """A DeepLab with fresh weights (``init_model``: class-score convs N(0, 0.01)), in eval mode. Arguments
    as ``make_config`` (the mini backbone gets heads a quarter as wide unless told otherwise); rng: a
    ``np.random.Generator`` for the weights and then the dropout masks (None: unseeded)."""
    fn = "build_model"
    config = make_config(name, backbone, output_stride, num_classes, _fn=fn, **options)
    rng = np.random.default_rng() if rng is None else rng
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{fn}: rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    shapes, buffer_shapes = model_parameter_shapes(config)
    params, buffers = init_params(shapes, buffer_shapes, rng, dtype, fn, _score_std(shapes))
    return DeepLab(config, _init_heads(config, params, dtype), buffers, False, rng)
