"""The aligned Xception backbone of DeepLab v3+ (Xception-41, -65, -71), as TF DeepLab builds it
(``research/deeplab/core/xception.py``) and timm ports it (``xception41/65/71``, whose names are used here).

    stem    3x3 conv stride 2 (32) -> BN -> ReLU -> 3x3 conv (64) -> BN -> ReLU           (stride 2)
    entry   blocks of 128, 256, 728 channels, each of stride 2 (Xception-71: 128 s2, 256 s1, 256 s2,
            728 s1, 728 s2), 1x1 conv + BN shortcut
    middle  8 (Xception-41) or 16 blocks of 728 channels, stride 1, identity shortcut
    exit    a block (728, 1024, 1024) stride 2 with a 1x1 conv + BN shortcut; then a block (1536, 1536, 2048),
            stride 1, no shortcut

A block is three separable convs (depthwise 3x3 -> BN -> pointwise 1x1 -> BN); the block's stride is on the
third and on the shortcut conv. ReLU comes *before* each separable conv ("start with ReLU"), except in the last
exit block, where a ReLU follows each BN instead (TF's code; the paper says BN and ReLU after every depthwise
conv, the code adds only BN there). Every BN has eps 1e-3 (TF and timm).

Output stride: the stem halves the input; a block whose stride would take the running stride past the
target keeps stride 1 at the current rate, and every later block's rate is multiplied by the stride it gave
up (TF's ``stack_blocks_dense``). OS 16: exit block 1 at rate 1 without its stride, the last block at rate 2.
OS 8: entry block 3 loses its stride, the middle flow and exit block 1 at rate 2, the last block at rate 4.

Stride-4 features for the v3+ decoder (``low_level``), in the entry block entered at stride 4 (block 1;
Xception-71: block 2), 256 channels, at the second separable conv's output (``low_level_tap``):
"tf" (default): its pointwise BN output, TF DeepLab's tap
(``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise``); "smp": the ReLU after it (``act3``,
the input of the third separable conv), timm's feature tap and so what smp's ``tu-xception*`` encoders give
their decoder. ``minideeplab.interop`` loads smp's and timm's models with "smp", so that they match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from minideeplab.specs.checks import is_int

__all__ = ["XCEPTION_DEPTHS", "XCEPTION_WIDTHS", "XCEPTION_BN_EPS", "XceptionBlock", "Xception", "stride_rate_plan"]

# depth -> (entry flow as (width index, stride) per block, middle blocks); widths index XCEPTION_WIDTHS[2:5]
XCEPTION_DEPTHS = {
    41: (((0, 2), (1, 2), (2, 2)), 8),
    65: (((0, 2), (1, 2), (2, 2)), 16),
    71: (((0, 2), (1, 1), (1, 2), (2, 1), (2, 2)), 16),
}
# stem conv 1, stem conv 2, entry 128, 256, 728 (also the middle flow and exit block 1's first conv),
# exit block 1 (1024), the last block's first two convs (1536) and its output (2048)
XCEPTION_WIDTHS = (32, 64, 128, 256, 728, 1024, 1536, 2048)
XCEPTION_BN_EPS = 1e-3  # every BN's, as TF and timm (torch's default is 1e-5)
TAPS = ("tf", "smp")


class XceptionBlock(NamedTuple):
    """One block of three separable convs."""

    in_channels: int
    out_channels: tuple[int, int, int]  # of each separable conv
    stride: int                         # on the third separable conv and on the shortcut conv
    dilation: int                       # of every depthwise conv of the block (padding = dilation: "same")
    skip: str                           # "conv" (1x1 conv + BN, stride), "sum" (identity) or "none"
    start_with_relu: bool               # ReLU before each separable conv; False: after each BN instead


def _spec_error(msg):
    return ValueError(f"Xception: {msg}")


def stride_rate_plan(strides, output_stride: int, stride: int = 2) -> tuple[tuple[int, int], ...]:
    """TF DeepLab's ``stack_blocks_dense`` over blocks of nominal ``strides`` (one int per block, the input
    already at ``stride``: 2 after Xception's stem) -> ((stride kept, rate), ...) one pair per block.

    A block keeps its stride while the running stride times it stays within ``output_stride``; past that it
    keeps stride 1 and runs at the current rate, and the rate of every later block is multiplied by the stride
    it gave up. E.g. Xception-65 at output stride 16: exit block 1 (1, 1), the last block (1, 2)."""
    plan, rate = [], 1
    for s in strides:
        if s > 1 and stride * s > output_stride:
            plan.append((1, rate))
            rate *= s
        else:
            plan.append((s, rate))
            stride *= s
    return tuple(plan)


@dataclass(frozen=True)
class Xception:
    """Aligned Xception (timm's ``xception41/65/71`` layout and names, without the classifier).

    depth: 41, 65 or 71.
    output_stride: 8, 16 (DeepLab v3+'s default) or 32 (no dilation).
    middle_blocks: blocks in the middle flow; None: the depth's (8 for 41, 16 for 65 and 71). Fewer for a
      small model (tests): the structure stays, only the repetition shrinks.
    widths: the 8 channel counts of ``XCEPTION_WIDTHS`` (stem 32, 64; entry 128, 256, 728; exit 1024,
      1536, 2048); narrow ones for quick runs.
    low_level_tap: "tf" (the pointwise BN output, TF DeepLab's) or "smp" (the ReLU after it: timm's, smp's).

    Derived: ``blocks`` (XceptionBlock, in order: ``blocks.{i}`` in the parameter names),
    ``low_level_block`` (the index of the block whose ``act3`` is the stride-4 tap).
    """

    depth: int = 65
    output_stride: int = 16
    middle_blocks: int | None = None
    widths: tuple[int, ...] = XCEPTION_WIDTHS
    low_level_tap: str = "tf"
    blocks: tuple[XceptionBlock, ...] = field(init=False, repr=False)
    low_level_block: int = field(init=False, repr=False)

    aux_tap = None
    default_aspp_rates = None

    @property
    def label(self) -> str:
        full = self == Xception(self.depth, self.output_stride, low_level_tap=self.low_level_tap)
        return f"xception{self.depth}" + ("" if full else " (reduced)")

    def __post_init__(self):
        if not is_int(self.depth) or self.depth not in XCEPTION_DEPTHS:
            raise _spec_error(f"depth must be 41, 65 or 71, got {self.depth!r}")
        if not is_int(self.output_stride) or self.output_stride not in (8, 16, 32):
            raise _spec_error(f"output_stride must be 8, 16 or 32, got {self.output_stride!r}")
        entry, middle = XCEPTION_DEPTHS[int(self.depth)]
        m = self.middle_blocks
        if m is not None and (not is_int(m) or m < 0):
            raise _spec_error(f"middle_blocks must be None or an int >= 0, got {m!r}")
        w = self.widths
        if not isinstance(w, (tuple, list)) or len(w) != 8 or not all(is_int(c) and c >= 1 for c in w):
            raise _spec_error(f"widths must be 8 ints >= 1 (stem 32, 64; entry 128, 256, 728; exit 1024, "
                              f"1536, 2048), got {w!r}")
        if self.low_level_tap not in TAPS:
            raise _spec_error(f"low_level_tap must be 'tf' (the BN output, TF DeepLab's) or 'smp' (the ReLU after "
                              f"it, timm's and smp's), got {self.low_level_tap!r}")
        set_ = object.__setattr__
        set_(self, "depth", int(self.depth))
        set_(self, "output_stride", int(self.output_stride))
        set_(self, "middle_blocks", None if m is None else int(m))
        set_(self, "widths", tuple(int(c) for c in w))
        w = self.widths
        m = middle if m is None else int(m)

        plan = [(w[2 + k], w[2 + k], w[2 + k], s) for k, s in entry]
        plan += [(w[4], w[4], w[4], 1)] * m
        plan += [(w[4], w[5], w[5], 2), (w[6], w[6], w[7], 1)]
        nominal = [s for *_, s in plan]
        blocks, cin, stride, low = [], w[1], 2, None
        for i, ((*outs, _), (s, dilation)) in enumerate(zip(plan, stride_rate_plan(nominal, self.output_stride))):
            last = i == len(plan) - 1
            if nominal[i] > 1 and stride == 4 and low is None:
                low = i
            stride *= s
            skip = "none" if last else ("conv" if s != 1 or cin != outs[2] else "sum")
            blocks.append(XceptionBlock(cin, tuple(outs), s, dilation, skip, not last))
            cin = outs[2]
        set_(self, "blocks", tuple(blocks))
        set_(self, "low_level_block", low)

    @property
    def low_level_channels(self) -> int:
        return self.blocks[self.low_level_block].out_channels[1]

    @property
    def out_channels(self) -> int:
        return self.widths[7]

    def conv_table(self) -> dict[str, tuple[int, int]]:
        """(stride, dilation) of every conv, keyed by its name (the weight's key without ".weight"), in the
        order they run (a block's shortcut after its stack, as timm)."""
        table = {"stem.0.conv": (2, 1), "stem.1.conv": (1, 1)}
        for i, b in enumerate(self.blocks):
            for k in range(3):
                p = f"blocks.{i}.stack.conv{k + 1}"
                table[f"{p}.conv_dw"] = (b.stride if k == 2 else 1, b.dilation)
                table[f"{p}.conv_pw"] = (1, 1)
            if b.skip == "conv":
                table[f"blocks.{i}.shortcut.conv"] = (b.stride, 1)
        return table
