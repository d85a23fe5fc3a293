"""Dilated backbones from scratch, forward and backward: ResNet (torchvision layout, ``resnet.py``),
VGG-16 DeepLab-LargeFOV (``vgg.py``) and MobileNetV3-Large (``mobilenet.py``), run through one registry,
``BACKBONES``: a spec's type -> its module's functions. A new backbone is its spec
(``minideeplab.specs.backbone``), its module here, one entry in ``BACKBONES`` and its twin
(``minideeplab.reference.backbone``).

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

* ``ResNet``, ``VGG``: frozen specs (``minideeplab.specs.backbone``); the per-block stride and dilation are
  computed once, from the output stride and the dilation convention (see ``ResNet``).
* ``init_backbone(spec, rng) -> (params, buffers)``: Kaiming normal convs (as torchvision), BN 1 / 0.
* ``backbone_forward(spec, params, buffers, x, training) -> (features, cache)``: ``features`` holds
  ``low_level`` (the stride-4 features the DeepLab v3+ decoder uses), ``out`` (the last stage) and any
  other tap a head reads (ResNet: ``layer3``, the aux head's input; MobileNetV3: ``low``, stride 8).
* ``backbone_backward(spec, d_features, cache) -> (dx, grads)``.
* ``backbone_infer(spec, params, buffers, x) -> features``: eval only, and lean: keeps no caches, folds
  each eval batch norm (and ReLU, and a block's residual sum) into one in-place pass after its conv
  (``atrous.conv2d_fused``), max pools without recording the argmax. The same numbers as
  ``backbone_forward(..., training=False)``, up to float rounding.

Arrays are NCHW, float32 or float64; every output has the dtype of the input. The PyTorch twin is
``minideeplab.reference.backbone``: the same specs build ``nn.Module``s whose ``state_dict`` keys are
these dicts' keys.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from minideeplab.scratch import mit, mobilenet, mobilenet_v2, resnet, vgg, vit, xception
from minideeplab.scratch.params import check_subset, init_params
from minideeplab.specs.backbone import VGG, BlockPlan, ResNet, VGGLayer
from minideeplab.specs.checks import check_float_array, names
from minideeplab.specs.mobilenet import MobileNetV3
from minideeplab.specs.mobilenet_v2 import MobileNetV2
from minideeplab.specs.segformer import MiT
from minideeplab.specs.vit import ViT
from minideeplab.specs.xception import Xception

__all__ = ["BlockPlan", "ResNet", "VGGLayer", "VGG", "BackboneUnit", "BACKBONES", "parameter_shapes", "init_backbone",
           "check_params", "check_image", "BackboneCache", "backbone_forward", "backbone_backward", "backbone_infer"]


class BackboneUnit(NamedTuple):
    """A backbone's functions:

        shapes(spec) -> (params, buffers)                           name -> shape, the twin's state_dict order
        forward(spec, params, buffers, x, training) -> (features, steps, taps)
                features: name -> array; steps: [(name, cache)] in order; taps: feature -> the step it is out of
        step_backward(dy, step cache) -> (dx, grads)
        infer(spec, params, buffers, x) -> features                 eval, no caches
    batch_norm: whether it has batch norm (training then needs more than one value per channel in "out").
    backward: None (the steps are one chain, run backwards by ``backbone_backward``, each feature's gradient
    joining after the step it is out of), or, for a backbone with a branch beside its chain (the ViT's
    stride-4 conv stem), backward(d_features, steps, taps) -> (dx, grads)."""

    shapes: Callable
    forward: Callable
    step_backward: Callable
    infer: Callable
    batch_norm: bool
    backward: Callable | None = None


# the registry: a backbone spec's type -> its unit
BACKBONES = {ResNet: BackboneUnit(resnet.parameter_shapes, resnet.forward, resnet.step_backward, resnet.infer, True),
             VGG: BackboneUnit(vgg.parameter_shapes, vgg.forward, vgg.step_backward, vgg.infer, False),
             MobileNetV3: BackboneUnit(mobilenet.parameter_shapes, mobilenet.forward, mobilenet.step_backward,
                                       mobilenet.infer, True),
             Xception: BackboneUnit(xception.parameter_shapes, xception.forward, xception.step_backward, xception.infer,
                                    True),
             MobileNetV2: BackboneUnit(mobilenet_v2.parameter_shapes, mobilenet_v2.forward, mobilenet_v2.step_backward,
                                       mobilenet_v2.infer, True),
             ViT: BackboneUnit(vit.parameter_shapes, vit.forward, vit.step_backward, vit.infer, False, vit.backward),
             MiT: BackboneUnit(mit.parameter_shapes, mit.forward, mit.step_backward, mit.infer, False)}


def check_backbone_spec(fn, spec):
    if type(spec) not in BACKBONES:
        raise ValueError(f"{fn}: spec must be {' or '.join('a ' + t.__name__ for t in BACKBONES)}, "
                         f"got {type(spec).__name__}")


# ---------------------------------------------------------------------------------------------
# parameters


def parameter_shapes(spec) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in torchvision's state_dict order. num_batches_tracked is ()."""
    check_backbone_spec("parameter_shapes", spec)
    return BACKBONES[type(spec)].shapes(spec)


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
    "out": the last stage's; ResNet: "layer3" too, the aux head's input}. ResNet: low_level = layer1
    (N, 64 * expansion, ceil(H/4), ceil(W/4)) for full widths, out = layer4 (N, 512 * expansion, ceil(H/os),
    ceil(W/os)). VGG: ReLU(conv3_3), ReLU(fc7).

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
    if training and BACKBONES[type(spec)].batch_norm and N * out_hw[0] * out_hw[1] < 2:
        raise ValueError(f"{fn}: x has shape {x.shape}, which gives a {out_hw[0]}x{out_hw[1]} last stage: "
                         f"training (batch norm) needs N * H_out * W_out >= 2")
    check_params(spec, params, buffers, x.dtype, fn)
    training = bool(training)

    features, steps, taps = BACKBONES[type(spec)].forward(spec, params, buffers, x, training)
    shapes = {"x": x.shape} | {k: v.shape for k, v in features.items()}
    return features, BackboneCache(spec, steps, taps, shapes, x.dtype)


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
        others = [t for t in cache.taps if t not in ("low_level", "out")]
        raise ValueError(f"{fn}: d_features has unexpected keys {names(unknown)}, expected 'low_level' and/or 'out'"
                         + (f", or {names(others)}" if others else ""))
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

    unit = BACKBONES[type(spec)]
    if unit.backward is not None:
        dh, grads = unit.backward(d, cache.steps, cache.taps)
    else:
        grads, step_backward = {}, unit.step_backward
        joins = {cache.taps[key]: key for key in d if key != "out"}
        dh = d["out"]
        for name, c in reversed(cache.steps):
            if name in joins:  # a feature is this step's output: its gradient joins here
                dh = dh + d[joins[name]]
            dh, g = step_backward(dh, c)
            grads.update(g)
    order = parameter_shapes(spec)[0]
    return dh, {k: grads[k] for k in order}


def backbone_infer(spec, params, buffers, x):
    """Eval ``backbone_forward`` without caches: x (N, 3, H, W) -> features, the same keys."""
    fn = "backbone_infer"
    check_backbone_spec(fn, spec)
    check_image(fn, x, False, spec.output_stride, repr(spec))
    check_params(spec, params, buffers, x.dtype, fn)
    return BACKBONES[type(spec)].infer(spec, params, buffers, x)
