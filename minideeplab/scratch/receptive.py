"""Receptive-field arithmetic for stacks of (atrous) convolutions, along one axis.

A layer is ``(kernel, stride, rate)`` or ``(kernel, stride, rate, padding)`` with padding
"same" (p = rate*(kernel-1)//2, odd kernels only), "valid" (p = 0) or an int >= 0; the
3-tuple form uses the ``padding`` argument of the function (default "same").
Pixel ``i`` of a feature map sits at coordinate ``i``; input coordinates are the pixel
indices of the image, so a field can reach past the border (into the zero padding).

Square kernels and equal strides on both axes make the 2-D answers outer products of
the 1-D ones, e.g. the 2-D footprint is ``np.outer(f, f)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minideeplab.specs.checks import is_int
from minideeplab.specs.conv import resolve_padding


class RF(NamedTuple):
    """Receptive field of one output pixel of a stack of layers, in input pixels.

    size:  number of input pixels the field spans along one axis (holes included).
    jump:  distance in input pixels between two neighbouring output pixels (product of strides).
    start: input coordinate of the centre of output pixel 0's field; output pixel ``i``'s
           field is centred at ``start + i*jump``. A float: x.5 when an even kernel puts the
           centre between two pixels. With "same" padding and odd kernels it is 0.
    """

    size: int
    jump: int
    start: float

    @property
    def first(self) -> float:
        """Input coordinate of the leftmost pixel of output pixel 0's field (may be < 0)."""
        return self.start - (self.size - 1) / 2


class Layer(NamedTuple):
    """One convolution along an axis, padding resolved to an int."""

    kernel: int
    stride: int
    rate: int
    padding: int


def as_layers(layers, padding="same") -> list[Layer]:
    """Validate a stack of layers and resolve each padding to an int; raises ValueError."""
    try:
        layers = list(layers)
    except TypeError:
        raise ValueError(f"layers must be a list of (kernel, stride, rate[, padding]) tuples, "
                         f"got {layers!r}") from None
    out = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, (tuple, list)) or len(layer) not in (3, 4):
            raise ValueError(f"layer {i}: expected (kernel, stride, rate) or (kernel, stride, rate, padding), "
                             f"got {layer!r}")
        k, s, r = layer[:3]
        p = layer[3] if len(layer) == 4 else padding
        for name, v in (("kernel", k), ("stride", s), ("rate", r)):
            if not is_int(v) or v < 1:
                raise ValueError(f"layer {i} {tuple(layer)!r}: {name} must be an int >= 1, got {v!r}")
        p = resolve_padding(p, int(k), int(r), fn=f"layer {i} {tuple(layer)!r}")
        out.append(Layer(int(k), int(s), int(r), p))
    return out


def effective_kernel_size(kernel: int, rate: int = 1) -> int:
    """Input pixels spanned by one dilated kernel: rate*(kernel-1) + 1."""
    for name, v in (("kernel", kernel), ("rate", rate)):
        if not is_int(v) or v < 1:
            raise ValueError(f"effective_kernel_size: {name} must be an int >= 1, got {v!r}")
    return rate * (kernel - 1) + 1


def receptive_field(layers, padding="same") -> RF:
    """RF(size, jump, start) of one output pixel of ``layers``, applied first to last.

    Recurrence over layers, starting from (size, jump, start) = (1, 1, 0) and k_eff = rate*(k-1)+1:
      size  += (k_eff - 1) * jump
      start += ((k_eff - 1)/2 - padding) * jump
      jump  *= stride
    """
    size, jump, start = 1, 1, 0.0
    for k, s, r, p in as_layers(layers, padding):
        k_eff = r * (k - 1) + 1
        size += (k_eff - 1) * jump
        start += ((k_eff - 1) / 2 - p) * jump
        jump *= s
    return RF(size, jump, start)


def footprint(layers, padding="same") -> np.ndarray:
    """Path counts over one output pixel's field: int64 array of length ``receptive_field(layers).size``.

    Entry ``t`` counts the paths from input pixel ``first + t`` to the output pixel through
    the stack (all weights 1, no border); it is 0 at a hole that no tap ever samples.
    It equals the input gradient of the output pixel when every weight is 1. 2-D: np.outer(f, f).
    """
    counts, jump = np.ones(1, dtype=np.int64), 1
    for k, s, r, _ in as_layers(layers, padding):
        taps = np.zeros(r * (k - 1) * jump + 1, dtype=np.int64)
        taps[:: r * jump] = 1  # the k taps of this layer, spaced rate*jump input pixels apart
        counts = np.convolve(counts, taps)
        jump *= s
    return counts


def coverage(layers, padding="same") -> float:
    """Fraction of the 2-D field (size x size) that the output pixel actually samples."""
    f = footprint(layers, padding) > 0
    return float(f.mean() ** 2)


def sampled_pixels(layers, size: int, center: int | None = None, padding="same") -> np.ndarray:
    """2-D path counts on a ``size x size`` input grid for the field centred on pixel ``center``.

    ``center`` defaults to the middle of the grid; pixels of the field outside the grid are
    dropped (unlike a real border, which also zero-pads). Shape (size, size), int64.
    """
    f = footprint(layers, padding)
    center = size // 2 if center is None else int(center)
    line = np.zeros(size, dtype=np.int64)
    lo = center - (len(f) - 1) // 2  # leftmost pixel of the field (odd size: exact centre)
    for t, c in enumerate(f):
        if 0 <= lo + t < size:
            line[lo + t] = c
    return np.outer(line, line)
