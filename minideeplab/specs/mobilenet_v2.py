"""MobileNetV2 (Sandler et al. 2018) as a DeepLab encoder, in torchvision's layout and names, dilated as
segmentation_models_pytorch dilates its ``mobilenet_v2`` encoder.

    features.0       3x3 conv stride 2 (32) -> BN -> ReLU6
    features.1..17   inverted residuals (t, c, n, s): (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                     (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1): n blocks of c output
                     channels, the first of stride s; each block: 1x1 expansion to t x its input channels
                     -> BN -> ReLU6 (not when t = 1), 3x3 depthwise (the stride) -> BN -> ReLU6, 1x1
                     projection -> BN (linear: no ReLU), plus the input when stride 1 and channels equal
    features.18      1x1 conv (1280) -> BN -> ReLU6

BN eps 1e-5 (torch's default, torchvision's). Output stride (smp's ``make_dilated``): a stage whose first
block would take the running stride past the target runs at stride 1, and every conv of it and of the later
stages samples at the stride given up so far (smp's convention: the strided block itself at the new rate).
OS 16: features.14..18 at rate 2; OS 8: features.7..13 at rate 2, 14..18 at rate 4.

Features for DeepLab: ``low_level`` = features.3 (24 channels, stride 4: what smp's DeepLabV3Plus decoder
reads), ``out`` = features.18 (1280 channels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from minideeplab.specs.checks import is_int

__all__ = ["MOBILENET_V2_SETTING", "InvertedResidualPlan", "MobileNetV2"]

MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                        (6, 320, 1, 1))  # (expansion t, channels c, blocks n, stride s of the first)
STEM, LAST = 32, 1280


class InvertedResidualPlan(NamedTuple):
    """One inverted residual block (``features.{i}``)."""

    in_channels: int
    hidden: int         # channels after the expansion (= in_channels when t = 1: no expansion conv)
    out_channels: int
    stride: int         # of the depthwise conv
    dilation: int       # of the depthwise conv
    expand: bool        # whether there is a 1x1 expansion conv (t != 1)
    residual: bool      # stride 1 and in == out (decided before dilation, as torchvision)


@dataclass(frozen=True)
class MobileNetV2:
    """torchvision's ``mobilenet_v2`` (width 1.0) without its classifier, dilated as smp's encoder.

    output_stride: 8, 16 (smp's DeepLabV3Plus default) or 32 (no dilation).
    Derived: ``blocks`` (features.1..17 as InvertedResidualPlan), ``last_dilation`` (of features.18: a 1x1
    conv, so it changes nothing; recorded for the conv table).
    """

    output_stride: int = 16
    blocks: tuple[InvertedResidualPlan, ...] = field(init=False, repr=False)
    last_dilation: int = field(init=False, repr=False)

    aux_tap = None
    default_aspp_rates = None
    label = "mobilenet_v2"

    def __post_init__(self):
        if not is_int(self.output_stride) or self.output_stride not in (8, 16, 32):
            raise ValueError(f"MobileNetV2: output_stride must be 8, 16 or 32, got {self.output_stride!r}")
        object.__setattr__(self, "output_stride", int(self.output_stride))
        blocks, cin, stride, rate = [], STEM, 2, 1
        for t, c, n, s in MOBILENET_V2_SETTING:
            for j in range(n):
                s_j = s if j == 0 else 1
                residual = s_j == 1 and cin == c  # torchvision decides it with the undilated stride
                if s_j > 1 and stride * s_j > self.output_stride:  # smp: from this block on, dilated
                    rate *= s_j
                    s_j = 1
                elif s_j > 1:
                    stride *= s_j
                blocks.append(InvertedResidualPlan(cin, cin * t, c, s_j, rate, t != 1, residual))
                cin = c
        object.__setattr__(self, "blocks", tuple(blocks))
        object.__setattr__(self, "last_dilation", rate)

    @property
    def low_level_layer(self) -> str:
        """The stride-4 block smp's decoder reads: the last of the 24-channel stage."""
        return "features.3"

    @property
    def low_level_channels(self) -> int:
        return MOBILENET_V2_SETTING[1][1]

    @property
    def out_channels(self) -> int:
        return LAST

    def conv_table(self) -> dict[str, tuple[int, int]]:
        """(stride, dilation) of every 3x3 conv, keyed by its name (the weight's key without ".weight")."""
        table = {"features.0.0": (2, 1)}
        for i, b in enumerate(self.blocks, start=1):
            table[f"features.{i}.conv.{1 if b.expand else 0}.0"] = (b.stride, b.dilation)
        return table
