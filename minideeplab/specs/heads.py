"""Head specs: the parts of a model after its backbone, each a frozen description that the scratch unit
(``minideeplab.scratch.heads``) runs and the PyTorch twin (``minideeplab.reference.heads``) builds. With
``aspp.ASPP`` and ``aspp.ASPPL`` these are every head of the DeepLab family:

    LargeFOVHead  v1: drop7 -> fc8 (1x1 to the classes); fc6, fc7 are the VGG backbone's
    ASPPL         v2: one branch per rate, their class scores summed (``specs.aspp``)
    DeepLabHead   v3: ASPP -> 3x3 conv, BN, ReLU -> 1x1 to the classes (torchvision's ``DeepLabHead``)
    FCNHead       v3's auxiliary head on layer3: 3x3 conv, BN, ReLU, dropout -> 1x1 (torchvision's ``FCNHead``)
    ASPP          v3+'s context module (``specs.aspp``)
    Decoder       v3+: the ASPP output upsampled to the stride-4 features, concatenated with their 1x1
                  projection, fused by 3x3 convs
    Classifier    a 1x1 conv with bias to the classes (v3+'s last layer)
    LRASPPHead    LR-ASPP on MobileNetV3: the stride-16 features gated by their global pool, upsampled to
                  the stride-8 ones; class scores of both, summed (torchvision's ``LRASPPHead``)
    SegFormerHead SegFormer's all-MLP decoder on the MiT's four stages (smp's ``SegformerDecoder``)
    CRFHead       the dense CRF as the last layer (CRF-as-RNN): mean-field iterations on the class scores,
                  resized to the input, and the input's RGB colours; learns its kernel weights and compatibility

A model wires them in ``Step``s (``specs.deeplab``): each step names its module (the state_dict prefix of
its parameters), the features it reads and the one it writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from minideeplab.specs.aspp import ASPP
from minideeplab.specs.checks import check_flag, check_int, check_real

__all__ = ["LargeFOVHead", "DeepLabHead", "FCNHead", "Decoder", "Classifier", "LRASPPHead", "SegFormerHead",
           "CRFHead", "Step", "DECODER_LAYOUTS", "INPUT_MEAN", "INPUT_STD", "CRF_METHODS"]

DECODER_LAYOUTS = ("paper", "smp")
# the normalisation of every model's input: ImageNet's mean and std on RGB in [0, 1] (``training.data.to_tensor``)
INPUT_MEAN = (0.485, 0.456, 0.406)
INPUT_STD = (0.229, 0.224, 0.225)
CRF_METHODS = ("lattice", "exact", "window")  # scratch.crf.METHODS


@dataclass(frozen=True)
class LargeFOVHead:
    """DeepLab v1's classifier on VGG-16 LargeFOV's fc7: dropout ``drop7`` (when training), then ``fc8``, a
    1x1 conv with bias to the classes."""

    in_channels: int
    num_classes: int
    dropout: float = 0.5

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "in_channels", check_int("LargeFOVHead", "in_channels", self.in_channels))
        set_(self, "num_classes", check_int("LargeFOVHead", "num_classes", self.num_classes))
        set_(self, "dropout", check_real("LargeFOVHead", "dropout", self.dropout, 0, 1, hi_open=True))


@dataclass(frozen=True)
class DeepLabHead:
    """DeepLab v3's head (torchvision's ``DeepLabHead``): ``.0`` the ASPP, ``.1`` a 3x3 conv (no bias) to
    ``aspp.out_channels``, ``.2`` BN, ReLU, ``.4`` a 1x1 conv with bias to the classes."""

    aspp: ASPP
    num_classes: int

    def __post_init__(self):
        if not isinstance(self.aspp, ASPP):
            raise ValueError(f"DeepLabHead: aspp must be an ASPP, got {type(self.aspp).__name__}")
        object.__setattr__(self, "num_classes", check_int("DeepLabHead", "num_classes", self.num_classes))


@dataclass(frozen=True)
class FCNHead:
    """torchvision's ``FCNHead``, DeepLab v3's auxiliary head: ``.0`` a 3x3 conv (no bias) to
    ``in_channels // 4``, ``.1`` BN, ReLU, ``.3`` dropout (when training), ``.4`` 1x1 with bias to the classes."""

    in_channels: int
    num_classes: int
    dropout: float = 0.1

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "in_channels", check_int("FCNHead", "in_channels", self.in_channels, 4))
        set_(self, "num_classes", check_int("FCNHead", "num_classes", self.num_classes))
        set_(self, "dropout", check_real("FCNHead", "dropout", self.dropout, 0, 1, hi_open=True))

    @property
    def channels(self) -> int:
        return self.in_channels // 4


@dataclass(frozen=True)
class Decoder:
    """DeepLab v3+'s decoder: the ASPP output ``aspp_channels`` wide is upsampled (bilinear) to the stride-4
    features (``low_level_in`` channels), which ``low_level`` projects (1x1, BN, ReLU) to
    ``low_level_channels``; the concatenation goes through ``fuse``: 3x3 conv + BN + ReLU units ``channels``
    wide (depthwise-separable with ``separable``). Output: (N, channels, H/4, W/4).

    layout "paper": two fuse units. "smp" (segmentation_models_pytorch's ``DeepLabV3Plus``): ``aspp_conv``, a
    3x3 unit on the ASPP output before the upsampling, then ONE fuse unit.
    align_corners: of the upsampling (the model's choice, passed down)."""

    aspp_channels: int
    low_level_in: int
    low_level_channels: int = 48
    channels: int = 256
    separable: bool = False
    layout: str = "paper"
    align_corners: bool = False

    def __post_init__(self):
        set_ = object.__setattr__
        for f in ("aspp_channels", "low_level_in", "low_level_channels", "channels"):
            set_(self, f, check_int("Decoder", f, getattr(self, f)))
        for f in ("separable", "align_corners"):
            set_(self, f, check_flag("Decoder", f, getattr(self, f)))
        if self.layout not in DECODER_LAYOUTS:
            raise ValueError(f"Decoder: layout must be one of {', '.join(map(repr, DECODER_LAYOUTS))}, "
                             f"got {self.layout!r}")

    @property
    def n_fuse(self) -> int:
        """The 3x3 units after the concat: two (paper), one (smp)."""
        return 1 if self.layout == "smp" else 2

    @property
    def aspp_conv(self) -> bool:
        """Whether a 3x3 unit runs on the ASPP output before the upsampling (smp)."""
        return self.layout == "smp"


@dataclass(frozen=True)
class Classifier:
    """A 1x1 conv with bias from ``in_channels`` to the classes."""

    in_channels: int
    num_classes: int

    def __post_init__(self):
        object.__setattr__(self, "in_channels", check_int("Classifier", "in_channels", self.in_channels))
        object.__setattr__(self, "num_classes", check_int("Classifier", "num_classes", self.num_classes))


@dataclass(frozen=True)
class LRASPPHead:
    """LR-ASPP (Lite R-ASPP, "Searching for MobileNetV3"), torchvision's ``LRASPPHead``, on two features:
    ``low`` (stride 8, ``low_channels``) and ``high`` (the backbone's out, ``high_channels``).

        cbr              1x1 conv (no bias) to ``inter_channels``, BN, ReLU         (.0 conv, .1 BN)
        scale            global average pool, 1x1 conv (no bias) to ``inter_channels``, sigmoid   (.1 conv)
        x = cbr(high) * scale(high), resized (bilinear) to ``low``'s size
        low_classifier(low) + high_classifier(x)   both 1x1 convs with bias to the classes

    The paper pools with a 49 x 49 window and stride (16, 20); torchvision (and this) pools globally.
    align_corners: of the resize (the model's choice, passed down). Output: (N, classes, H/8, W/8)."""

    low_channels: int
    high_channels: int
    num_classes: int
    inter_channels: int = 128
    align_corners: bool = False

    def __post_init__(self):
        set_ = object.__setattr__
        for f in ("low_channels", "high_channels", "num_classes", "inter_channels"):
            set_(self, f, check_int("LRASPPHead", f, getattr(self, f)))
        set_(self, "align_corners", check_flag("LRASPPHead", "align_corners", self.align_corners))


@dataclass(frozen=True)
class CRFHead:
    """The fully-connected CRF as the model's last layer, CRF-as-RNN's way: ``n_iters`` mean-field iterations
    (``scratch.crf.mean_field``) from the class scores, bilinearly resized to the input (DeepLab's CRF works at
    the image's resolution: its bilateral kernel sharpens boundaries to the pixel), on the input's RGB colours.
    Output: log Q (N, classes, H, W), log-probabilities, so that the loss's softmax of them is Q itself.

    Learned: ``log_pos_w``, ``log_bi_w`` (the two kernel weights as logs, so they stay positive; initialised at
    ``pos_w``, ``bi_w``) and ``compat`` (the C x C label compatibility, a penalty, initialised at Potts 1 - I).
    Fixed, as CRF-as-RNN: the bandwidths ``pos_xy_std``, ``bi_xy_std`` (pixels), ``bi_rgb_std`` (0..255).
    Defaults: DeepLab's kernel parameters (``scratch.crf.PARAMETER_SETS``), 5 iterations as CRF-as-RNN trains.

    The colours: the head reads the model's normalised input ``x`` (the step input "input") and recovers
    RGB = round(255 (x * std + mean)), clipped to 0..255, with ``mean`` and ``std`` the input normalisation
    (ImageNet's, ``INPUT_MEAN``, ``INPUT_STD``): exact for every uint8 colour (float32 rounding moves 255 (x std +
    mean) by < 1e-4), so no interface changes (training, evaluation and ``segment`` pass x as before). Padding
    becomes a colour too: training crops padded with black (label 255, ignored) give black, ``predict``'s padding
    with 0 after normalisation gives the mean colour (124, 116, 104).
    method: "lattice" (the permutohedral lattice, the CRF-as-RNN way), "exact" (N x N, small inputs), "window"
    (``window`` x ``window`` neighbourhoods). align_corners: of the resize (the model's)."""

    num_classes: int
    n_iters: int = 5
    pos_w: float = 3.0
    bi_w: float = 4.0
    pos_xy_std: float = 3.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0
    method: str = "lattice"
    normalization: str = "symmetric"
    window: int = 11
    align_corners: bool = False
    mean: tuple = INPUT_MEAN
    std: tuple = INPUT_STD

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "num_classes", check_int("CRFHead", "num_classes", self.num_classes))
        set_(self, "n_iters", check_int("CRFHead", "n_iters", self.n_iters, 0))
        set_(self, "window", check_int("CRFHead", "window", self.window))
        for f in ("pos_w", "bi_w", "pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            v = getattr(self, f)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) or \
                    not math.isfinite(v) or v <= 0:
                why = " (learned as its log)" if f.endswith("_w") else ""
                raise ValueError(f"CRFHead: {f} must be a finite number > 0{why}, got {v!r}")
            set_(self, f, float(v))
        if self.method not in CRF_METHODS:
            raise ValueError(f"CRFHead: method must be one of {', '.join(map(repr, CRF_METHODS))}, got {self.method!r}")
        if self.normalization not in ("symmetric", "after"):
            raise ValueError(f"CRFHead: normalization must be 'symmetric' or 'after', got {self.normalization!r}")
        if self.method == "window" and self.window % 2 == 0:
            raise ValueError(f"CRFHead: window must be odd, got {self.window!r}")
        set_(self, "align_corners", check_flag("CRFHead", "align_corners", self.align_corners))
        for f in ("mean", "std"):
            v = getattr(self, f)
            if not isinstance(v, (tuple, list)) or len(v) != 3 or not all(
                    isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in v) or (
                    f == "std" and min(v) <= 0):
                raise ValueError(f"CRFHead: {f} must be 3 finite numbers (RGB in [0, 1]{', > 0' * (f == 'std')}), "
                                 f"got {v!r}")
            set_(self, f, tuple(float(c) for c in v))


@dataclass(frozen=True)
class SegFormerHead:
    """SegFormer's all-MLP decoder (smp's ``SegformerDecoder`` names): each stage's map (``in_channels``, stride 4
    first) through a linear layer to ``channels`` (``mlp_stage.{j}.linear``, j = 0 for the last stage), resized
    (bilinear, align_corners False) to the first's size, concatenated last stage first, fused by a 1x1 conv + BN
    + ReLU (``fuse_stage.0``, ``.1``). Output: (N, channels, H/4, W/4); a Classifier step follows."""

    in_channels: tuple[int, int, int, int]
    channels: int = 256

    def __post_init__(self):
        ins = self.in_channels
        if not (isinstance(ins, tuple) and len(ins) == 4):
            raise ValueError(f"SegFormerHead: in_channels must be a tuple of 4 (one per stage), got {ins!r}")
        object.__setattr__(self, "in_channels", tuple(check_int("SegFormerHead", "in_channels", c) for c in ins))
        object.__setattr__(self, "channels", check_int("SegFormerHead", "channels", self.channels))


class Step(NamedTuple):
    """One module of a model after its backbone: ``name`` (its parameters' state_dict prefix; "" puts them
    at the top level), ``spec`` (what it is), ``inputs`` (the features it reads: the backbone's taps,
    "low_level", "layer3", "out", or an earlier step's output) and ``output`` (the feature it writes;
    "scores" are the class scores the model resizes to the input, "aux" the auxiliary scores; "input" is the
    model's input x itself, which the CRF head reads for the image's colours).
    ``training_only``: runs only when training (the aux head)."""

    name: str
    spec: object
    inputs: tuple[str, ...]
    output: str
    training_only: bool = False
