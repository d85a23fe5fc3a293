"""Receptive fields measured with PyTorch: backpropagate from one output pixel, read the input gradient.

The twin of ``minideeplab.scratch.receptive``, sharing nothing with it but the layer
format and the padding rule: the stack is built as ``torch.nn.functional.conv2d`` layers with
all-ones weights, and the field is wherever the input gradient is non-zero. With positive
weights no two paths can cancel, so the non-zero set is exactly the set of sampled pixels and
the gradient value is the number of paths.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from minideeplab.scratch.receptive import as_layers


class MeasuredRF(NamedTuple):
    """A receptive field read off a gradient.

    size, jump, start: as in ``minideeplab.scratch.receptive.RF``.
    grad: (size, size) float64 input gradient over the field of one output pixel, path counts.
    footprint: (size, size) bool, ``grad > 0``.
    """

    size: int
    jump: int
    start: float
    grad: np.ndarray
    footprint: np.ndarray


def input_gradient(layers, input_size: int, out_index: tuple[int, int], padding="same") -> np.ndarray:
    """d out[out_index] / d x for a (input_size, input_size) image through ``layers`` (ones weights).

    Returns (input_size, input_size) float64. Raises ValueError if ``out_index`` is outside the output.
    """
    stack = as_layers(layers, padding)
    x = torch.zeros(1, 1, input_size, input_size, dtype=torch.float64, requires_grad=True)
    y = x
    for k, s, r, p in stack:
        w = torch.ones(1, 1, k, k, dtype=torch.float64)
        y = F.conv2d(y, w, stride=s, padding=p, dilation=r)
    i, j = out_index
    if not (0 <= i < y.shape[2] and 0 <= j < y.shape[3]):
        raise ValueError(f"output pixel {out_index} is outside the output of shape {tuple(y.shape[2:])}")
    y[0, 0, i, j].backward()
    return x.grad[0, 0].numpy()


def measure_receptive_field(layers, padding="same", max_input: int = 4096) -> MeasuredRF:
    """Measure size, jump, start and the footprint of ``layers`` from input gradients.

    The input grows (doubling) until the field of a middle output pixel lies strictly inside it.
    Two neighbouring output pixels give the jump; the field centre of pixel ``i`` gives
    ``start = centre - i*jump``.
    """
    n = 16
    while n <= max_input:
        try:
            out_len = _output_length(layers, n, padding)
        except RuntimeError:  # input too small for the stack
            out_len = 0
        i = out_len // 2
        if i + 1 < out_len:
            g0 = input_gradient(layers, n, (i, i), padding)
            g1 = input_gradient(layers, n, (i + 1, i + 1), padding)
            lo0, hi0 = _extent(g0)
            lo1, hi1 = _extent(g1)
            if lo0 > 0 and hi1 < n - 1:  # neither field touches the border
                size, jump = hi0 - lo0 + 1, lo1 - lo0
                start = (lo0 + hi0) / 2 - i * jump
                grad = g0[lo0:hi0 + 1, lo0:hi0 + 1].copy()
                return MeasuredRF(int(size), int(jump), float(start), grad, grad > 0)
        n *= 2
    raise ValueError(f"the receptive field of {layers!r} does not fit in a {max_input}x{max_input} input")


def _output_length(layers, n, padding) -> int:
    x = torch.zeros(1, 1, n, n, dtype=torch.float64)
    for k, s, r, p in as_layers(layers, padding):
        x = F.conv2d(x, torch.ones(1, 1, k, k, dtype=torch.float64), stride=s, padding=p, dilation=r)
    return int(x.shape[2])


def _extent(grad: np.ndarray) -> tuple[int, int]:
    cols = np.nonzero(grad.any(axis=0))[0]
    return int(cols[0]), int(cols[-1])
