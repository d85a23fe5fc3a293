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

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from minideeplab.scratch._validate import FLOAT_DTYPES, _is_int
from minideeplab.scratch.atrous import atrous_conv2d, atrous_conv2d_backward, conv2d_fused
from minideeplab.scratch.layers import (BN_EPS, BatchNormCache, MaxPoolCache, _float_array, batch_norm2d,
                                        batch_norm2d_backward, max_pool2d, max_pool2d_backward, max_pool2d_infer,
                                        relu, relu_backward)

__all__ = ["BlockPlan", "ResNet", "VGGLayer", "VGG", "parameter_shapes", "init_backbone", "check_params", "check_subset", "check_image",
           "conv_bn_forward", "conv_bn_backward", "stem_forward", "stem_backward",
           "basic_block_forward", "basic_block_backward", "bottleneck_forward", "bottleneck_backward",
           "conv_relu_forward", "conv_relu_backward", "BackboneCache", "backbone_forward", "backbone_backward",
           "init_params", "check_channels", "bn_scale_shift", "conv_bn_infer", "conv_relu_infer", "stem_infer", "block_infer",
           "backbone_infer"]


# ---------------------------------------------------------------------------------------------
# specs

# depth -> (block, blocks per stage)
RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    "mini": ("bottleneck", (1, 1, 2, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}  # output channels of a block / its width
CONVENTIONS = ("torchvision", "smp")


class BlockPlan(NamedTuple):
    """One residual block: where it sits and how its convs sample."""

    stride: int        # on the first 3x3 conv (basic: conv1; bottleneck: conv2, as torchvision v1.5)
                       # and on the downsample conv
    dilation: int      # of every 3x3 conv of the block (padding = dilation, so "same")
    downsample: bool   # whether the shortcut is a 1x1 conv + BN (the block changes stride or channels)
    in_channels: int
    width: int         # channels of the 3x3 convs
    out_channels: int  # width * expansion (1 basic, 4 bottleneck)


def _spec_error(cls, msg):
    return ValueError(f"{cls}: {msg}")


@dataclass(frozen=True)
class ResNet:
    """A ResNet backbone without its classifier (torchvision layout, names and init).

    depth: 18, 34 (basic blocks), 50, 101, 152 (bottlenecks), or ``"mini"``: bottlenecks, blocks
      (1, 1, 2, 3), widths 16/32/64/128, stem 16 (low_level 64 channels, out 512), small enough to
      train on a CPU. layer4 has 3 blocks so that multi-grid (1, 2, 4) applies, layer3 2 so that the
      torchvision convention's "later blocks" exist at output stride 8.
    output_stride: 32 (no dilation), 16 (layer4 dilated, rate 2) or 8 (layer3 rate 2, layer4 rate 4).
    dilation_convention: how a dilated stage's first block is built.
      ``"torchvision"`` (``replace_stride_with_dilation``): block0 keeps the previous stage's dilation
      (layer3 block0 d=1 and later blocks d=2 at OS 8; layer4 block0 d=2, later d=4), stride 1.
      ``"smp"`` (segmentation_models_pytorch's ``make_dilated``): every conv of a dilated stage, block0
      and its downsample included, gets stride 1 and the stage's dilation.
      Basic blocks (which torchvision refuses to dilate) use the block's dilation on both 3x3 convs.
    multi_grid: DeepLab v3's unit rates for layer4, one per block, e.g. (1, 2, 4): block j's dilation is
      multi_grid[j] times the stage's rate, for every block whatever the convention (the paper: (1, 2, 4)
      at output stride 16 gives rates (2, 4, 8)). None: the convention's rates.

    Derived (not arguments): ``block``, ``blocks``, ``widths``, ``stem_width``, ``expansion``, and
    ``stages``: 4 tuples of ``BlockPlan``, layer1 to layer4.
    """

    depth: int | str = 50
    output_stride: int = 16
    dilation_convention: str = "torchvision"
    multi_grid: tuple[int, ...] | None = None
    block: str = field(init=False, repr=False)
    blocks: tuple[int, ...] = field(init=False, repr=False)
    widths: tuple[int, ...] = field(init=False, repr=False)
    stem_width: int = field(init=False, repr=False)
    expansion: int = field(init=False, repr=False)
    stages: tuple[tuple[BlockPlan, ...], ...] = field(init=False, repr=False)

    def __post_init__(self):
        depth = self.depth
        if not (isinstance(depth, str) or _is_int(depth)) or depth not in RESNET_DEPTHS:
            raise _spec_error("ResNet", f"depth must be one of 18, 34, 50, 101, 152 or 'mini', got {depth!r}")
        if not _is_int(self.output_stride) or self.output_stride not in (8, 16, 32):
            raise _spec_error("ResNet", f"output_stride must be 8, 16 or 32, got {self.output_stride!r}")
        if self.dilation_convention not in CONVENTIONS:
            raise _spec_error("ResNet", f"dilation_convention must be 'torchvision' or 'smp', "
                                        f"got {self.dilation_convention!r}")
        block, blocks = RESNET_DEPTHS[depth]
        mg = self.multi_grid
        if mg is not None:
            if (not isinstance(mg, (tuple, list)) or len(mg) != blocks[3]
                    or not all(_is_int(m) and m >= 1 for m in mg)):
                raise _spec_error("ResNet", f"multi_grid must be None or {blocks[3]} ints >= 1, one per block "
                                            f"of layer4 (depth {depth!r}), got {mg!r}")
            mg = tuple(int(m) for m in mg)
        widths, stem = ((16, 32, 64, 128), 16) if depth == "mini" else ((64, 128, 256, 512), 64)
        set_ = object.__setattr__  # frozen: set the derived fields once, here
        set_(self, "depth", depth if isinstance(depth, str) else int(depth))
        set_(self, "output_stride", int(self.output_stride))
        set_(self, "multi_grid", mg)
        set_(self, "block", block)
        set_(self, "blocks", blocks)
        set_(self, "widths", widths)
        set_(self, "stem_width", stem)
        set_(self, "expansion", EXPANSION[block])
        set_(self, "stages", _resnet_stages(block, blocks, widths, stem, self.output_stride,
                                            self.dilation_convention, mg))

    @property
    def low_level_channels(self) -> int:
        return self.widths[0] * self.expansion

    @property
    def out_channels(self) -> int:
        return self.widths[3] * self.expansion

    def conv_table(self) -> dict[str, tuple[int, int]]:
        """(stride, dilation) of every conv, keyed by its name (the weight's key without ".weight").
        1x1 convs: dilation 1 in the torchvision convention; the block's dilation in the smp one (smp
        sets it on every conv of a dilated stage; on a 1x1 it changes nothing)."""
        table = {"conv1": (2, 1)}
        smp = self.dilation_convention == "smp"
        for i, stage in enumerate(self.stages, start=1):
            for j, b in enumerate(stage):
                p, one = f"layer{i}.{j}", (b.dilation if smp else 1)
                if self.block == "bottleneck":
                    table.update({f"{p}.conv1": (1, one), f"{p}.conv2": (b.stride, b.dilation), f"{p}.conv3": (1, one)})
                else:
                    table.update({f"{p}.conv1": (b.stride, b.dilation), f"{p}.conv2": (1, b.dilation)})
                if b.downsample:
                    table[f"{p}.downsample.0"] = (b.stride, one)
        return table


def _resnet_stages(block, blocks, widths, stem, output_stride, convention, multi_grid):
    """The BlockPlans of layer1..layer4. torchvision's ``_make_layer`` logic: a dilated stage multiplies
    the running dilation by the stride it gives up; its block0 keeps the previous dilation (torchvision)
    or takes the new one (smp)."""
    n_dilated = {32: 0, 16: 1, 8: 2}[output_stride]  # how many of the last stages trade stride for dilation
    expansion = EXPANSION[block]
    stages, dilation, in_ch = [], 1, stem
    for i, (n, width) in enumerate(zip(blocks, widths)):
        stride = 1 if i == 0 else 2
        out_ch = width * expansion
        downsample = stride != 1 or in_ch != out_ch  # decided before dilation, as smp (torchvision agrees)
        previous = dilation
        if i >= 4 - n_dilated:
            dilation *= stride
            stride = 1
        rates = [dilation] * n
        if convention == "torchvision":
            rates[0] = previous
        if i == 3 and multi_grid is not None:  # the paper: every block at unit rate x the stage's rate
            rates = [dilation * m for m in multi_grid]
        stages.append(tuple(BlockPlan(stride if j == 0 else 1, rates[j], downsample and j == 0,
                                      in_ch if j == 0 else out_ch, width, out_ch) for j in range(n)))
        in_ch = out_ch
    return tuple(stages)


class VGGLayer(NamedTuple):
    """One step of VGG-LargeFOV: a conv followed by ReLU, or a 3x3 max pool with padding 1."""

    name: str          # conv: its parameters' prefix; pool: torchvision's index of that pool (no parameters)
    kind: str          # "conv" or "pool"
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    dilation: int


VGG16_CONVS = (2, 2, 3, 3, 3)      # convs per stage
VGG_POOL_STRIDES = (2, 2, 2, 1, 1)  # pool4 and pool5 keep the resolution: output stride 8
VGG_DILATIONS = (1, 1, 1, 1, 2)     # conv5 samples 2 apart to make up for pool4


@dataclass(frozen=True)
class VGG:
    """VGG-16 DeepLab-LargeFOV (DeepLab v1), output stride 8.

    Layers, named as torchvision's ``vgg16().features`` so its conv weights load by name:
    conv1_1..conv5_3 = ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}`` (3x3, bias, each then ReLU;
    the ReLU is index + 1), pool1..pool5 = ``features.{4,9,16,23,30}``: 3x3 max pools with padding 1,
    stride 2 for pool1-3 and stride 1 for pool4-5 (Caffe's DeepLab; torchvision's are 2x2 stride 2);
    conv5 dilation 2; then ``fc6`` 3x3 at rate ``fc6_rate`` (12) to ``fc_channels`` (1024), ReLU, and
    ``fc7`` 1x1 to ``fc_channels``, ReLU. ``fc6``/``fc7`` are convs; their names are the paper's.
    Not here: the paper's dropout after fc6 and fc7 (the backbone is deterministic; drop7 can be applied
    to ``out`` by the head), and fc8 (the classifier, part of the head).

    ``low_level`` is the ReLU of conv3_3 (``features.14``, stride 4, widths[2] channels); ``out`` the ReLU
    of fc7. Pools use floor rounding (torch's default): Caffe rounds up, the same for sizes 8k+1.

    widths: channels of the 5 conv stages (VGG-16: 64, 128, 256, 512, 512); narrow ones for quick runs.
    Derived: ``layers``, the VGGLayer steps in order; ``output_stride`` (8); ``low_level_layer``.
    """

    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    fc_channels: int = 1024
    fc6_rate: int = 12
    output_stride: int = field(init=False, repr=False, default=8)
    low_level_layer: str = field(init=False, repr=False, default="features.14")
    layers: tuple[VGGLayer, ...] = field(init=False, repr=False)

    def __post_init__(self):
        w = self.widths
        if not isinstance(w, (tuple, list)) or len(w) != 5 or not all(_is_int(c) and c >= 1 for c in w):
            raise _spec_error("VGG", f"widths must be 5 ints >= 1 (one per conv stage), got {w!r}")
        for name in ("fc_channels", "fc6_rate"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise _spec_error("VGG", f"{name} must be an int >= 1, got {v!r}")
        object.__setattr__(self, "widths", tuple(int(c) for c in w))
        layers, index, cin = [], 0, 3
        for n, width, pool_stride, dilation in zip(VGG16_CONVS, self.widths, VGG_POOL_STRIDES, VGG_DILATIONS):
            for _ in range(n):
                layers.append(VGGLayer(f"features.{index}", "conv", cin, width, 3, 1, dilation))
                cin, index = width, index + 2  # conv, ReLU
            layers.append(VGGLayer(f"features.{index}", "pool", cin, cin, 3, pool_stride, 1))
            index += 1
        fc = self.fc_channels
        layers += [VGGLayer("fc6", "conv", cin, fc, 3, 1, self.fc6_rate), VGGLayer("fc7", "conv", fc, fc, 1, 1, 1)]
        object.__setattr__(self, "layers", tuple(layers))

    @property
    def low_level_channels(self) -> int:
        return self.widths[2]

    @property
    def out_channels(self) -> int:
        return self.fc_channels


def _check_spec(fn, spec):
    if not isinstance(spec, (ResNet, VGG)):
        raise ValueError(f"{fn}: spec must be a ResNet or a VGG, got {type(spec).__name__}")


# ---------------------------------------------------------------------------------------------
# parameters


def parameter_shapes(spec) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in torchvision's state_dict order. num_batches_tracked is ()."""
    _check_spec("parameter_shapes", spec)
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


def init_params(shapes, buffer_shapes, rng, dtype=np.float32, fn="init_params", std=None):
    """Fresh arrays for the given shapes, as torchvision initialises: conv weights Kaiming normal, fan-out
    mode, std sqrt(2 / (Cout/groups * kh * kw)) (a depthwise kernel (C, 1, k, k) counts k * k), conv
    biases 0; BN weight 1, bias 0; running mean 0, var 1; num_batches_tracked 0 (int64).
    std: {conv weight name: std} drawn N(0, std) instead (DeepLab's class-score layers); the draws are
    the same ones, in the same order, only scaled differently."""
    std = {} if std is None else std
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{fn}: rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                         f"got {type(rng).__name__}")
    if np.dtype(dtype) not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: dtype must be float32 or float64, got {np.dtype(dtype)}")
    params = {}
    for name, shape in shapes.items():
        if len(shape) == 4:  # a conv weight
            depthwise = shape[1] == 1 and shape[2] > 1
            fan_out = (1 if depthwise else shape[0]) * shape[2] * shape[3]
            params[name] = (rng.standard_normal(shape) * std.get(name, np.sqrt(2.0 / fan_out))).astype(dtype)
        elif name.endswith(".weight") and name[:-len(".weight")] + ".running_mean" in buffer_shapes:
            params[name] = np.ones(shape, dtype=dtype)  # BN gamma
        else:
            params[name] = np.zeros(shape, dtype=dtype)  # BN beta, conv bias
    buffers = {}
    for name, shape in buffer_shapes.items():
        if name.endswith("num_batches_tracked"):
            buffers[name] = np.zeros((), dtype=np.int64)
        else:
            buffers[name] = (np.ones if name.endswith("running_var") else np.zeros)(shape, dtype=dtype)
    return params, buffers


def init_backbone(spec, rng, dtype=np.float32) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fresh (params, buffers), as torchvision initialises: conv weights Kaiming normal, fan-out mode,
    std sqrt(2 / (Cout * kh * kw)); conv biases 0; BN weight 1, bias 0; running mean 0, var 1."""
    fn = "init_backbone"
    _check_spec(fn, spec)
    return init_params(*parameter_shapes(spec), rng, dtype, fn)


def _names(keys, limit=6):
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_params(spec, params, buffers, dtype, fn="check_params"):
    """params and buffers must hold exactly the spec's keys, with its shapes, floats of ``dtype``
    (num_batches_tracked: an integer 0-D array). Raises ValueError naming what does not match."""
    _check_spec(fn, spec)
    check_subset(fn, repr(spec), *parameter_shapes(spec), params, buffers, dtype)


def check_subset(fn, what, shapes, buffer_shapes, params, buffers, dtype, prefix=""):
    """The keys of ``shapes``/``buffer_shapes`` must be in params/buffers with those shapes and ``dtype``
    (num_batches_tracked: an integer 0-D array); keys below ``prefix`` that are not expected are an error
    too (all keys when the prefix is empty). Other keys (the rest of a model) are left alone."""
    below = (lambda k: k.startswith(prefix + ".")) if prefix else (lambda k: True)
    for kind, d, expected in (("params", params, shapes), ("buffers", buffers, buffer_shapes)):
        if not isinstance(d, dict):
            raise ValueError(f"{fn}: {kind} must be a dict of numpy arrays, got {type(d).__name__}")
        missing = [k for k in expected if k not in d]
        unexpected = [k for k in d if below(k) and k not in expected]
        if missing or unexpected:
            parts = ([f"missing {_names(missing)}"] if missing else []) + (
                [f"unexpected {_names(unexpected)}"] if unexpected else [])
            raise ValueError(f"{fn}: {kind} do not match {what}: {'; '.join(parts)}")
        for name, shape in expected.items():
            a = d[name]
            if not isinstance(a, np.ndarray):
                raise ValueError(f"{fn}: {kind}[{name!r}] must be a numpy array, got {type(a).__name__}")
            if a.shape != shape:
                raise ValueError(f"{fn}: {kind}[{name!r}] has shape {a.shape}, expected {shape} for {what}")
            if name.endswith("num_batches_tracked"):
                if not np.issubdtype(a.dtype, np.integer):
                    raise ValueError(f"{fn}: {kind}[{name!r}] has dtype {a.dtype}, expected an integer dtype")
            elif a.dtype != dtype:
                raise ValueError(f"{fn}: {kind}[{name!r}] has dtype {a.dtype} but x has dtype {np.dtype(dtype)}; "
                                 f"they must share one dtype (float32 or float64)")


# ---------------------------------------------------------------------------------------------
# conv + BN, the unit of every ResNet block


class ConvBNCache(NamedTuple):
    conv: str          # parameter names
    bn: str
    x: np.ndarray      # the conv's input
    weight: np.ndarray
    stride: int
    dilation: int
    bn_cache: BatchNormCache


def conv_bn_forward(x, params, buffers, conv, bn, stride, dilation, training):
    """Conv (no bias, "same" padding dilation * (k - 1) / 2) then batch norm.
    x (N, C, H, W) -> (y (N, Cout, ceil(H / stride), ceil(W / stride)), ConvBNCache).
    ``conv``, ``bn``: the names, e.g. "layer1.0.conv1", "layer1.0.bn1". Training updates the BN's
    running statistics in ``buffers`` in place and counts the batch in num_batches_tracked, as torch."""
    w = params[f"{conv}.weight"]
    h = atrous_conv2d(x, w, None, rate=dilation, stride=stride, padding="same")
    y, bn_cache = batch_norm2d(h, params[f"{bn}.weight"], params[f"{bn}.bias"],
                               buffers[f"{bn}.running_mean"], buffers[f"{bn}.running_var"], training)
    if training:
        buffers[f"{bn}.num_batches_tracked"] += 1
    return y, ConvBNCache(conv, bn, x, w, stride, dilation, bn_cache)


def conv_bn_backward(dy, cache):
    """dy (N, Cout, Ho, Wo) -> (dx, {conv.weight, bn.weight, bn.bias})."""
    c = cache
    dh, dgamma, dbeta = batch_norm2d_backward(dy, c.bn_cache)
    dx, dw, _ = atrous_conv2d_backward(dh, c.x, c.weight, rate=c.dilation, stride=c.stride, padding="same")
    return dx, {f"{c.conv}.weight": dw, f"{c.bn}.weight": dgamma, f"{c.bn}.bias": dbeta}


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


# ---------------------------------------------------------------------------------------------
# whole backbones


class BackboneCache(NamedTuple):
    """What ``backbone_backward`` needs: the spec and the caches of every step in forward order."""

    spec: ResNet | VGG
    steps: list        # (name, cache); ResNet: ("stem", StemCache), ("layer1.0", BlockCache), ...
                       # VGG: (layer name, ConvReLUCache or MaxPoolCache)
    low_level_step: str  # the step whose output is ``low_level``
    shapes: dict       # "x", "low_level", "out" -> shape
    dtype: np.dtype


def check_image(fn, x, training, output_stride, what):
    """x must be a float (N, 3, H, W) array with H, W >= output_stride; training a bool. -> x.shape"""
    _float_array(fn, "x", x, 4, "(N, C, H, W)")
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
    "out": the last stage's}. ResNet: low_level = layer1 (N, 64 * expansion, ceil(H/4), ceil(W/4)) for
    full widths, out = layer4 (N, 512 * expansion, ceil(H/os), ceil(W/os)). VGG: ReLU(conv3_3), ReLU(fc7).

    training: BN uses batch statistics and updates ``buffers`` in place (ResNet); eval uses the running
    ones. VGG has no BN and no dropout here: training changes nothing (its buffers are {}).
    H and W must be at least the output stride (smaller inputs would give a last stage that sees less
    than one of its output cells); training needs more than one value per channel in ``out``.
    """
    fn = "backbone_forward"
    _check_spec(fn, spec)
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
    low_step = spec.low_level_layer if isinstance(spec, VGG) else f"layer1.{len(spec.stages[0]) - 1}"
    features = {"low_level": low, "out": h}
    shapes = {"x": x.shape, "low_level": low.shape, "out": h.shape}
    return features, BackboneCache(spec, steps, low_step, shapes, x.dtype)


def backbone_backward(spec, d_features, cache):
    """d_features {"low_level": dL/dlow_level, "out": dL/dout} (either may be left out or None: zero)
    -> (dx (N, 3, H, W), grads), grads keyed and ordered like params."""
    fn = "backbone_backward"
    _check_spec(fn, spec)
    if not isinstance(cache, BackboneCache):
        raise ValueError(f"{fn}: cache must be the BackboneCache returned by backbone_forward, "
                         f"got {type(cache).__name__}")
    if cache.spec != spec:
        raise ValueError(f"{fn}: cache was made by backbone_forward with {cache.spec!r}, not {spec!r}")
    if not isinstance(d_features, dict):
        raise ValueError(f"{fn}: d_features must be a dict with 'low_level' and/or 'out', "
                         f"got {type(d_features).__name__}")
    unknown = [k for k in d_features if k not in ("low_level", "out")]
    if unknown:
        raise ValueError(f"{fn}: d_features has unexpected keys {_names(unknown)}, expected 'low_level' and/or 'out'")
    d = {}
    for key in ("low_level", "out"):
        g = d_features.get(key)
        if g is None:
            d[key] = np.zeros(cache.shapes[key], dtype=cache.dtype)
            continue
        _float_array(fn, f"d_features[{key!r}]", g)
        if g.dtype != cache.dtype:
            raise ValueError(f"{fn}: d_features[{key!r}] has dtype {g.dtype} but the forward's x had {cache.dtype}")
        if g.shape != cache.shapes[key]:
            raise ValueError(f"{fn}: d_features[{key!r}] has shape {g.shape}, expected {cache.shapes[key]} "
                             f"(the forward's {key})")
        d[key] = g

    grads = {}
    dh = d["out"]
    for name, c in reversed(cache.steps):
        if name == cache.low_level_step:  # low_level is this step's output: its gradient joins here
            dh = dh + d["low_level"]
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


def bn_scale_shift(params, buffers, bn):
    """Eval batch norm ``bn`` as y = x * scale + shift: scale = gamma / sqrt(running_var + eps),
    shift = beta - running_mean * scale; both (C,)."""
    gamma, var = params[f"{bn}.weight"], buffers[f"{bn}.running_var"]
    scale = gamma / np.sqrt(var + var.dtype.type(BN_EPS))
    return scale, params[f"{bn}.bias"] - buffers[f"{bn}.running_mean"] * scale


def conv_bn_infer(x, params, buffers, conv, bn, stride, dilation, relu=True, residual=None):
    """Eval ``conv_bn_forward`` (+ residual, + ReLU) without a cache: act(bn(conv(x)) + residual)."""
    check_channels("conv_bn_infer", x, params[f"{conv}.weight"],
                   {f"{bn}.{k}": params[f"{bn}.{k}"] for k in ("weight", "bias")}
                   | {f"{bn}.{k}": buffers[f"{bn}.{k}"] for k in ("running_mean", "running_var")})
    scale, shift = bn_scale_shift(params, buffers, bn)
    return conv2d_fused(x, params[f"{conv}.weight"], scale, shift, dilation, stride, "same",
                        residual=residual, relu=relu)


def conv_relu_infer(x, params, name, dilation):
    """``conv_relu_forward`` without a cache: ReLU(conv(x) + bias)."""
    b = params[f"{name}.bias"]
    check_channels("conv_relu_infer", x, params[f"{name}.weight"], {f"{name}.bias": b})
    return conv2d_fused(x, params[f"{name}.weight"], np.ones_like(b), b, dilation, 1, "same", relu=True)


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
    _check_spec(fn, spec)
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
