"""The geometry of a convolution and the checks of its arguments, shared by every atrous convolution
(scratch and reference).

Keeping the padding rule and the output-size formula here, in one place, means the
naive loops, the fast kernels and the PyTorch twin cannot disagree on them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minideeplab.specs.checks import FLOAT_DTYPES, is_int

__all__ = ["resolve_padding", "conv_output_size", "output_size", "ConvGeometry", "check_conv2d", "shifted_overlap"]


def resolve_padding(padding, kernel: int, rate: int = 1, fn: str = "atrous_conv2d") -> int:
    """Zero padding on each side of one axis: "same" -> rate*(kernel-1)//2, "valid" -> 0, or an int >= 0."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0
        if padding == "same":
            if kernel % 2 == 0:
                raise ValueError(f"{fn}: padding='same' needs an odd kernel size, got kernel size {kernel} "
                                 f"(use padding='valid' or an int)")
            return rate * (kernel - 1) // 2
    elif is_int(padding) and padding >= 0:
        return int(padding)
    raise ValueError(f"{fn}: padding must be 'same', 'valid' or an int >= 0, got {padding!r}")


def conv_output_size(size: int, kernel: int, rate: int = 1, stride: int = 1, padding="same") -> int:
    """Output length of one axis: floor((size + 2p - rate*(kernel-1) - 1) / stride) + 1."""
    for name, v, lo in (("size", size, 1), ("kernel", kernel, 1), ("rate", rate, 1), ("stride", stride, 1)):
        if not is_int(v) or v < lo:
            raise ValueError(f"conv_output_size: {name} must be an int >= {lo}, got {v!r}")
    p = resolve_padding(padding, kernel, rate, "conv_output_size")
    return output_size(size, kernel, rate, stride, p, padding, "conv_output_size", "size")


def output_size(size, k, rate, stride, p, padding, fn, axis) -> int:
    """Output length of one axis with padding p resolved; fn, padding and axis name it in the error."""
    footprint = rate * (k - 1) + 1  # the dilated kernel spans this many input pixels
    if footprint > size + 2 * p:
        raise ValueError(f"{fn}: kernel footprint rate*(k-1)+1 = {footprint} (rate={rate}, k={k}) is larger "
                         f"than the padded input {axis} {size} + 2*{p} = {size + 2 * p} (padding={padding!r})")
    return (size + 2 * p - footprint) // stride + 1


class ConvGeometry(NamedTuple):
    """The sizes of one conv: input (N, C, H, W), weight (Cout, C/groups, kh, kw), padding, output (Ho, Wo)."""

    N: int
    C: int
    H: int
    W: int
    Cout: int
    kh: int
    kw: int
    ph: int  # zero padding on top and bottom
    pw: int  # zero padding left and right
    Ho: int
    Wo: int


def check_conv2d(fn, x, weight, bias=None, rate=1, stride=1, padding="same", groups=1, dout=None) -> ConvGeometry:
    """Validate the arguments of an atrous conv (forward, or backward when ``dout`` is given).

    Raises ValueError naming the argument, what was received and what was expected.
    """
    arrays = [("x", x), ("weight", weight)]
    if bias is not None:
        arrays.append(("bias", bias))
    if dout is not None:
        arrays.append(("dout", dout))
    for name, a in arrays:
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: x has dtype {x.dtype}, expected float32 or float64")
    for name, a in arrays[1:]:
        if a.dtype != x.dtype:
            raise ValueError(f"{fn}: {name} has dtype {a.dtype} but x has dtype {x.dtype}; "
                             f"all arrays must share one dtype (float32 or float64)")
    for name, a, nd, layout in (("x", x, 4, "(N, C, H, W)"), ("weight", weight, 4, "(Cout, C/groups, kh, kw)")):
        if a.ndim != nd:
            raise ValueError(f"{fn}: {name} must be {nd}-D {layout}, got shape {a.shape}")
        if 0 in a.shape:
            raise ValueError(f"{fn}: {name} has an empty axis, shape {a.shape}")
    for name, v in (("rate", rate), ("stride", stride), ("groups", groups)):
        if not is_int(v) or v < 1:
            raise ValueError(f"{fn}: {name} must be an int >= 1, got {v!r}")
    rate, stride, groups = int(rate), int(stride), int(groups)

    N, C, H, W = x.shape
    Cout, cg, kh, kw = weight.shape
    if C % groups:
        raise ValueError(f"{fn}: x has {C} channels, not divisible by groups={groups}")
    if Cout % groups:
        raise ValueError(f"{fn}: weight has {Cout} output channels, not divisible by groups={groups}")
    if cg != C // groups:
        raise ValueError(f"{fn}: weight has {cg} input channels per group, expected {C // groups} "
                         f"(x has {C} channels, groups={groups})")
    if bias is not None and bias.shape != (Cout,):
        raise ValueError(f"{fn}: bias has shape {bias.shape}, expected ({Cout},) (one per output channel)")

    ph = resolve_padding(padding, kh, rate, fn)
    pw = resolve_padding(padding, kw, rate, fn)
    Ho = output_size(H, kh, rate, stride, ph, padding, fn, "height of x")
    Wo = output_size(W, kw, rate, stride, pw, padding, fn, "width of x")
    if dout is not None and dout.shape != (N, Cout, Ho, Wo):
        raise ValueError(f"{fn}: dout has shape {dout.shape}, expected the forward output shape "
                         f"{(N, Cout, Ho, Wo)}")
    return ConvGeometry(N, C, H, W, Cout, kh, kw, ph, pw, Ho, Wo)


def shifted_overlap(H, W, dy, dx):
    """((rows, cols), (rows, cols)): slices of the pixels of an H x W grid whose neighbour at offset (dy, dx) is
    inside the grid, and of those neighbours: a[here] pairs with a[there]. Empty when |dy| >= H or |dx| >= W."""
    def span(n, d):  # clamped so that no stop is negative (a negative stop would count from the end)
        return slice(min(n, max(0, -d)), max(0, n - max(0, d))), slice(min(n, max(0, d)), max(0, n - max(0, -d)))

    (ys, yt), (xs, xt) = span(H, dy), span(W, dx)
    return (ys, xs), (yt, xt)
