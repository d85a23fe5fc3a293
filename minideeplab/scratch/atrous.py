"""Atrous (dilated) convolution from scratch, forward and backward.

An atrous conv with rate r is an ordinary conv whose kernel taps are r pixels apart:

    out[n, o, y, x] = bias[o] + sum_{c, i, j} weight[o, c, i, j] * xpad[n, c, y*stride + i*r, x*stride + j*r]

Two versions of each function:

* ``atrous_conv2d_naive`` / ``atrous_conv2d_backward_naive``: plain loops, for reading.
* ``atrous_conv2d`` / ``atrous_conv2d_backward``: the fast ones (numba + BLAS), in ``atrous_fast``.

And for eval, ``conv2d_fused``: act(conv(x) * scale + shift (+ residual)), a conv followed by eval batch
norm (and a residual sum, and a ReLU) done as the conv's GEMMs and one in-place pass, keeping nothing.
"""

from __future__ import annotations

import numpy as np

from minideeplab.specs.conv import check_conv2d, conv_output_size, resolve_padding
from minideeplab.scratch.atrous_fast import atrous_conv2d, atrous_conv2d_backward, conv2d_fused

__all__ = ["conv_output_size", "resolve_padding", "atrous_conv2d_naive", "atrous_conv2d_backward_naive",
           "atrous_conv2d", "atrous_conv2d_backward", "conv2d_fused"]


def atrous_conv2d_naive(x, weight, bias=None, rate=1, stride=1, padding="same", groups=1):
    """Loop version. x (N, C, H, W), weight (Cout, C/groups, kh, kw), bias (Cout,) or None
    -> out (N, Cout, Ho, Wo)."""
    N, C, H, W, Cout, kh, kw, ph, pw, Ho, Wo = check_conv2d(
        "atrous_conv2d_naive", x, weight, bias, rate, stride, padding, groups)
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cin, cout = C // groups, Cout // groups  # channels per group
    out = np.zeros((N, Cout, Ho, Wo), dtype=x.dtype)
    for g in range(groups):
        xg = xpad[:, g * cin:(g + 1) * cin]          # (N, cin, Hp, Wp)
        wg = weight[g * cout:(g + 1) * cout]          # (cout, cin, kh, kw)
        for y in range(Ho):
            for x_ in range(Wo):
                y0, x0 = y * stride, x_ * stride
                # the dilated window: every rate-th pixel, kh x kw of them
                window = xg[:, :, y0:y0 + rate * (kh - 1) + 1:rate, x0:x0 + rate * (kw - 1) + 1:rate]
                # (N, cin, kh, kw) . (cout, cin, kh, kw) -> (N, cout)
                out[:, g * cout:(g + 1) * cout, y, x_] = np.tensordot(window, wg, axes=([1, 2, 3], [1, 2, 3]))
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def atrous_conv2d_backward_naive(dout, x, weight, rate=1, stride=1, padding="same", groups=1):
    """Loop version of the gradients. dout (N, Cout, Ho, Wo) -> (dx, dweight, dbias).

    Every output pixel used one dilated window of xpad; the gradient flows back to the same
    window: dwindow += dout * weight, dweight += dout * window.
    """
    N, C, H, W, Cout, kh, kw, ph, pw, Ho, Wo = check_conv2d(
        "atrous_conv2d_backward_naive", x, weight, None, rate, stride, padding, groups, dout=dout)
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxpad = np.zeros_like(xpad)
    dweight = np.zeros_like(weight)
    cin, cout = C // groups, Cout // groups
    for g in range(groups):
        ci, co = slice(g * cin, (g + 1) * cin), slice(g * cout, (g + 1) * cout)
        for y in range(Ho):
            for x_ in range(Wo):
                y0, x0 = y * stride, x_ * stride
                rows = slice(y0, y0 + rate * (kh - 1) + 1, rate)
                cols = slice(x0, x0 + rate * (kw - 1) + 1, rate)
                d = dout[:, co, y, x_]                                     # (N, cout)
                # (N, cout) . (cout, cin, kh, kw) -> (N, cin, kh, kw)
                dxpad[:, ci, rows, cols] += np.tensordot(d, weight[co], axes=(1, 0))
                # (N, cout) . (N, cin, kh, kw) -> (cout, cin, kh, kw)
                dweight[co] += np.tensordot(d, xpad[:, ci, rows, cols], axes=(0, 0))
    dx = dxpad[:, :, ph:ph + H, pw:pw + W]  # gradient that went into the zero padding is dropped
    dbias = dout.sum(axis=(0, 2, 3))
    return np.ascontiguousarray(dx), dweight, dbias
