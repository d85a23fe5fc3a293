"""Backbone specs: frozen descriptions of a ResNet (torchvision layout, dilated as DeepLab dilates it) and
of VGG-16 DeepLab-LargeFOV. Each computes its per-block (or per-layer) stride and dilation once; the
scratch backbones (``minideeplab.scratch.backbone``), their PyTorch twins (``minideeplab.reference.backbone``),
the multiply-add counts (``minideeplab.bench.cost``) and the figures all read them.

DeepLab keeps the feature maps large by trading the stride of the last stages for dilation: a stage
that would halve the resolution runs at stride 1 instead, and every later 3x3 conv samples its input
``rate`` pixels apart, so the receptive field grows as if the stride were still there. The output
stride (input size / feature size) drops from 32 to 16 or 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from minideeplab.specs.checks import is_int

__all__ = ["RESNET_DEPTHS", "EXPANSION", "CONVENTIONS", "BlockPlan", "ResNet", "VGGLayer", "VGG"]


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
        if not (isinstance(depth, str) or is_int(depth)) or depth not in RESNET_DEPTHS:
            raise _spec_error("ResNet", f"depth must be one of 18, 34, 50, 101, 152 or 'mini', got {depth!r}")
        if not is_int(self.output_stride) or self.output_stride not in (8, 16, 32):
            raise _spec_error("ResNet", f"output_stride must be 8, 16 or 32, got {self.output_stride!r}")
        if self.dilation_convention not in CONVENTIONS:
            raise _spec_error("ResNet", f"dilation_convention must be 'torchvision' or 'smp', "
                                        f"got {self.dilation_convention!r}")
        block, blocks = RESNET_DEPTHS[depth]
        mg = self.multi_grid
        if mg is not None:
            if (not isinstance(mg, (tuple, list)) or len(mg) != blocks[3]
                    or not all(is_int(m) and m >= 1 for m in mg)):
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

    # what a model asks of its backbone besides its features (see specs.deeplab): the aux head's input
    aux_tap = "layer3"
    default_aspp_rates = None  # None: tied to the output stride

    @property
    def label(self) -> str:
        """The backbone's name in messages and make_config: "resnet50", "mini"."""
        return "mini" if self.depth == "mini" else f"resnet{self.depth}"

    @property
    def aux_channels(self) -> int:
        """Channels of the aux head's input, layer3."""
        return self.widths[2] * self.expansion

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


@dataclass(frozen=True, repr=False)
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
    fc: False stops the network at pool5 (no fc6, fc7; ``out`` is pool5): the trunk of DeepLab v2's VGG-16
      ASPP-L, whose branches have an fc6 and fc7 each. Not in the repr unless False.
    Derived: ``layers``, the VGGLayer steps in order; ``output_stride`` (8); ``low_level_layer``.
    """

    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    fc_channels: int = 1024
    fc6_rate: int = 12
    fc: bool = field(default=True, repr=False)
    output_stride: int = field(init=False, repr=False, default=8)
    low_level_layer: str = field(init=False, repr=False, default="features.14")
    layers: tuple[VGGLayer, ...] = field(init=False, repr=False)

    def __post_init__(self):
        w = self.widths
        if not isinstance(w, (tuple, list)) or len(w) != 5 or not all(is_int(c) and c >= 1 for c in w):
            raise _spec_error("VGG", f"widths must be 5 ints >= 1 (one per conv stage), got {w!r}")
        for name in ("fc_channels", "fc6_rate"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise _spec_error("VGG", f"{name} must be an int >= 1, got {v!r}")
        object.__setattr__(self, "widths", tuple(int(c) for c in w))
        layers, index, cin = [], 0, 3
        for n, width, pool_stride, dilation in zip(VGG16_CONVS, self.widths, VGG_POOL_STRIDES, VGG_DILATIONS):
            for _ in range(n):
                layers.append(VGGLayer(f"features.{index}", "conv", cin, width, 3, 1, dilation))
                cin, index = width, index + 2  # conv, ReLU
            layers.append(VGGLayer(f"features.{index}", "pool", cin, cin, 3, pool_stride, 1))
            index += 1
        if not isinstance(self.fc, bool):
            raise ValueError(f"VGG: fc must be True or False, got {self.fc!r}")
        fc = self.fc_channels
        if self.fc:
            layers += [VGGLayer("fc6", "conv", cin, fc, 3, 1, self.fc6_rate), VGGLayer("fc7", "conv", fc, fc, 1, 1, 1)]
        object.__setattr__(self, "layers", tuple(layers))

    def __repr__(self):
        return (f"VGG(widths={self.widths!r}, fc_channels={self.fc_channels!r}, fc6_rate={self.fc6_rate!r}"
                f"{'' if self.fc else ', fc=False'})")

    aux_tap = None
    default_aspp_rates = None

    @property
    def label(self) -> str:
        return "vgg16" if self == VGG() else "vgg (narrow)"

    @property
    def low_level_channels(self) -> int:
        return self.widths[2]

    @property
    def out_channels(self) -> int:
        return self.fc_channels if self.fc else self.widths[4]
