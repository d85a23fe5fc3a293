"""The MobileNetV3-Large spec (Howard et al. 2019, "Searching for MobileNetV3", Table 1), in torchvision's
layout and names, dilated as torchvision's segmentation models dilate it.

The network is a stem (3x3 conv, stride 2, BN, hardswish), fifteen inverted residual blocks ("bneck") and
a last 1x1 conv to 6 x the last block's channels (BN, hardswish). An inverted residual widens its input
with a 1x1 conv (``expand``, left out when the width does not change), filters each channel on its own
(``depthwise`` k x k conv, groups = channels), optionally re-weights the channels (squeeze-and-excitation,
``se``) and narrows back with a linear 1x1 conv (``project``, BN, no activation); the input is added back
when the block keeps its stride and width. ReLU in the first blocks, hardswish in the later ones.

torchvision's names (``mobilenet_v3_large().features``, and the ``backbone`` of its segmentation models,
which drop the ``features.`` prefix): ``0`` the stem, ``1``..``15`` the blocks, ``16`` the last conv; in
block i, ``{i}.block.{j}`` is its j-th part in the order expand, depthwise, se, project (so the index of
a part depends on which parts the block has). A conv-BN-activation part holds ``.0`` (conv) and ``.1``
(BN); the SE part holds ``fc1`` and ``fc2`` (1x1 convs with bias).

Dilation (``mobilenet_v3_large(dilated=True)``, the segmentation models' backbone): the last three blocks
(160 channels, kernel 5) have dilation 2 and the first of them stride 1: output stride 16. Every batch
norm has eps 0.001 and momentum 0.01 (torchvision's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from minideeplab.specs.checks import is_int

__all__ = ["MOBILENET_V3_RATES", "MOBILENET_V3_LARGE", "MOBILENET_BN_EPS", "MOBILENET_BN_MOMENTUM", "make_divisible",
           "InvertedResidualPlan",
           "MobileNetV3"]

MOBILENET_V3_RATES = (12, 24, 36)  # the ASPP rates of torchvision's DeepLabV3 on it (see MobileNetV3)
MOBILENET_BN_EPS = 0.001
MOBILENET_BN_MOMENTUM = 0.01

# the paper's Table 1 (MobileNetV3-Large), one row per bneck:
# (in channels, kernel, expanded channels, out channels, squeeze-and-excitation, activation, stride)
MOBILENET_V3_LARGE = (
    (16, 3, 16, 16, False, "relu", 1),
    (16, 3, 64, 24, False, "relu", 2),
    (24, 3, 72, 24, False, "relu", 1),
    (24, 5, 72, 40, True, "relu", 2),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hardswish", 2),
    (80, 3, 200, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 480, 112, True, "hardswish", 1),
    (112, 3, 672, 112, True, "hardswish", 1),
    (112, 5, 672, 160, True, "hardswish", 2),
    (160, 5, 960, 160, True, "hardswish", 1),
    (160, 5, 960, 160, True, "hardswish", 1),
)
_DILATED = 3  # the last three blocks trade their stride for dilation 2 at output stride 16


def make_divisible(v: float, divisor: int = 8) -> int:
    """``v`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), rounded up once more
    when that lost more than 10 % (the TF MobileNet rule for widths scaled by a multiplier)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class InvertedResidualPlan(NamedTuple):
    """One bneck as it runs: channels, kernel, activation, the depthwise conv's stride and dilation."""

    in_channels: int
    kernel: int
    expanded: int          # channels of the depthwise conv
    out_channels: int
    squeeze: int           # channels of the SE's fc1, 0: no SE
    activation: str        # "relu" or "hardswish", after the expand and depthwise convs
    stride: int            # of the depthwise conv (1 where dilation replaced it)
    dilation: int
    residual: bool         # input added to the output (torchvision: the table's stride is 1, width kept)

    @property
    def parts(self) -> tuple[str, ...]:
        """The block's parts in order; part j is named ``block.{j}``."""
        return (("expand",) if self.expanded != self.in_channels else ()) + ("depthwise",) + (
            ("se",) if self.squeeze else ()) + ("project",)


def _spec_error(msg):
    return ValueError(f"MobileNetV3: {msg}")


@dataclass(frozen=True)
class MobileNetV3:
    """MobileNetV3-Large without its classifier (torchvision's layout, names and BN settings).

    width_mult: every width times this, rounded by ``make_divisible`` (torchvision's ``width_mult``;
      1.0 is the published network; small ones, e.g. 0.25, make a network quick to check).
    output_stride: 16 (torchvision's ``dilated=True``, the segmentation models') or 32 (the classifier's).

    Derived: ``stem_width``, ``blocks`` (15 ``InvertedResidualPlan``), ``last_channels`` (the last 1x1
    conv's, 6 x the last block's). Features (``features[i]`` = the output of torchvision's ``features.i``):
    ``low_level`` = features[3] (stride 4, 24 channels), ``low`` = features[4] (stride 8, 40 channels: the
    input of LR-ASPP's low branch and of DeepLabV3's aux head, torchvision's "low" / "aux"), ``out`` =
    features[16] (960 channels).
    """

    width_mult: float = 1.0
    output_stride: int = 16
    stem_width: int = field(init=False, repr=False)
    blocks: tuple[InvertedResidualPlan, ...] = field(init=False, repr=False)
    last_channels: int = field(init=False, repr=False)

    low_level_index = 3
    low_index = 4

    # the aux head reads "low"; torchvision's deeplabv3_mobilenet_v3_large keeps DeepLabHead's default rates, the
    # output-stride-8 ones, at output stride 16 (torchvision issue #7956: kept, the released weights were trained so)
    aux_tap = "low"
    default_aspp_rates = MOBILENET_V3_RATES

    @property
    def label(self) -> str:
        return "mobilenet_v3_large" + ("" if self.width_mult == 1 else f" x{self.width_mult:g}")

    @property
    def aux_channels(self) -> int:
        return self.low_channels

    def __post_init__(self):
        w = self.width_mult
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 4:
            raise _spec_error(f"width_mult must be a number in (0, 4], got {w!r}")
        if not is_int(self.output_stride) or self.output_stride not in (16, 32):
            raise _spec_error(f"output_stride must be 16 (dilated, torchvision's segmentation backbone) or 32, "
                              f"got {self.output_stride!r}")
        w = float(w)

        def width(c):
            return make_divisible(c * w)

        blocks = []
        for i, (cin, k, exp, cout, se, act, stride) in enumerate(MOBILENET_V3_LARGE):
            d = 2 if self.output_stride == 16 and i >= len(MOBILENET_V3_LARGE) - _DILATED else 1
            cin, e, cout = width(cin), width(exp), width(cout)
            blocks.append(InvertedResidualPlan(cin, k, e, cout, make_divisible(e // 4) if se else 0, act,
                                               1 if d > 1 else stride, d, stride == 1 and cin == cout))
        set_ = object.__setattr__
        set_(self, "width_mult", w)
        set_(self, "output_stride", int(self.output_stride))
        set_(self, "stem_width", blocks[0].in_channels)
        set_(self, "blocks", tuple(blocks))
        set_(self, "last_channels", 6 * blocks[-1].out_channels)

    @property
    def low_level_channels(self) -> int:
        return self.blocks[self.low_level_index - 1].out_channels

    @property
    def low_channels(self) -> int:
        return self.blocks[self.low_index - 1].out_channels

    @property
    def out_channels(self) -> int:
        return self.last_channels

    def conv_table(self) -> dict[str, tuple[int, int]]:
        """(stride, dilation) of every conv, keyed by its name (the weight's key without ".weight")."""
        table = {"0.0": (2, 1)}
        for i, b in enumerate(self.blocks, start=1):
            for j, part in enumerate(b.parts):
                p = f"{i}.block.{j}"
                if part == "se":
                    table.update({f"{p}.fc1": (1, 1), f"{p}.fc2": (1, 1)})
                else:
                    table[f"{p}.0"] = (b.stride, b.dilation) if part == "depthwise" else (1, 1)
        table[f"{len(self.blocks) + 1}.0"] = (1, 1)
        return table
