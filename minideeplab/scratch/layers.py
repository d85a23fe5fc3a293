"""The layers of a DeepLab network from scratch, forward and backward, in NumPy.

Every forward returns what its backward needs (a cache, a mask) or the backward takes the
forward's inputs again. Arrays are NCHW, float32 or float64, and every output has the dtype of
the input. Each function has a PyTorch twin in ``minideeplab.reference.layers``.

* ``batch_norm2d``: per-channel normalisation; batch statistics when training, running ones in eval.
* ``relu``, ``relu6``, ``dropout``: elementwise; ``hardswish``, ``hardsigmoid``, ``sigmoid`` (MobileNetV3, LR-ASPP)
  too.
* ``max_pool2d``, ``global_avg_pool``: pooling (ResNet stem 3/2/1, VGG 2/2/0, DeepLab-LargeFOV 3/1/1);
  ``max_pool2d_infer``: the max only, for eval (no argmax, no cache).
* ``resize_bilinear``: y = Ah @ x @ Aw^T with 1-D interpolation matrices, so the backward is the transpose;
  ``resize_bilinear_infer``: the same from each pixel's 2 x 2 neighbours, for eval.
* ``concat``: along channels, for ASPP and the v3+ decoder.
* ``separable_conv2d``: depthwise atrous conv then pointwise 1x1 (Xception, DeepLab v3+).
* ``softmax_cross_entropy``: the per-pixel loss, mean over the pixels not labelled ``ignore_index``.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from minideeplab.scratch.atrous import atrous_conv2d, atrous_conv2d_backward
from minideeplab.scratch.atrous_fast import _tap_range
from minideeplab.specs.checks import (check_flag, check_float_array, check_int, check_real, check_shape,
                                      is_int)
from minideeplab.specs.conv import check_conv2d

__all__ = ["BatchNormCache", "batch_norm2d", "batch_norm2d_backward", "relu", "relu_backward", "relu6", "relu6_backward",
           "hardsigmoid", "hardsigmoid_backward", "hardswish", "hardswish_backward", "sigmoid", "sigmoid_backward",
           "MaxPoolCache", "pool_output_size", "max_pool2d", "max_pool2d_backward", "max_pool2d_infer",
           "global_avg_pool", "global_avg_pool_backward", "bilinear_matrix", "resize_bilinear",
           "resize_bilinear_backward", "resize_bilinear_infer", "concat", "concat_backward", "dropout", "dropout_backward",
           "separable_conv2d", "separable_conv2d_backward", "softmax_cross_entropy"]


# ---------------------------------------------------------------------------------------------
# argument checks: ValueError naming the function, the argument, what was received and what was expected


def _same_shape(fn, name, a, expected, what):
    if a.shape != tuple(expected):
        raise ValueError(f"{fn}: {name} has shape {a.shape}, expected {tuple(expected)} ({what})")


def _cache(fn, cache, cls, maker):
    if not isinstance(cache, cls):
        raise ValueError(f"{fn}: cache must be the {cls.__name__} returned by {maker}, got {type(cache).__name__}")


# ---------------------------------------------------------------------------------------------
# batch norm


class BatchNormCache(NamedTuple):
    """What ``batch_norm2d_backward`` needs."""

    xhat: np.ndarray    # (N, C, H, W) the normalised input (x - mean) * invstd
    invstd: np.ndarray  # (C,) 1 / sqrt(var + eps), var the batch (training) or running (eval) variance
    gamma: np.ndarray   # (C,)
    training: bool      # whether mean and var were the batch statistics (and so depend on x)


BN_EPS = 1e-5  # torch's BatchNorm2d default


def batch_norm2d(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=BN_EPS):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel.

    x (N, C, H, W); gamma, beta, running_mean, running_var (C,) -> (y (N, C, H, W), BatchNormCache).

    training: mean, var are the batch statistics over (N, H, W) (var biased, divided by N*H*W), and the
    running statistics are updated in place as torch does: r = momentum * batch + (1 - momentum) * r,
    with the unbiased variance (divided by N*H*W - 1) for running_var.
    eval: mean, var = running_mean, running_var, left untouched.
    """
    fn = "batch_norm2d"
    check_float_array(fn, "x", x, 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        check_float_array(fn, name, a, like=("x", x))
        _same_shape(fn, name, a, (C,), "one per channel of x")
    training = check_flag(fn, "training", training)
    momentum = check_real(fn, "momentum", momentum, 0, 1)
    if not isinstance(eps, (float, int, np.floating)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"{fn}: eps must be a number > 0, got {eps!r}")

    if training:
        m = N * H * W  # values per channel
        if m < 2:
            raise ValueError(f"{fn}: training needs more than 1 value per channel, got x of shape {x.shape}")
        for name, a in (("running_mean", running_mean), ("running_var", running_var)):
            if not a.flags.writeable:
                raise ValueError(f"{fn}: {name} is read-only, but training updates it in place")
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[:, None, None]) ** 2).mean(axis=(0, 2, 3))  # biased: the batch's own spread
        running_mean[...] = momentum * mean + (1 - momentum) * running_mean
        running_var[...] = momentum * (var * m / (m - 1)) + (1 - momentum) * running_var
    else:
        mean, var = running_mean, running_var
    invstd = 1 / np.sqrt(var + x.dtype.type(eps))
    xhat = (x - mean[:, None, None]) * invstd[:, None, None]
    y = gamma[:, None, None] * xhat + beta[:, None, None]
    return y, BatchNormCache(xhat, invstd, gamma, training)


def batch_norm2d_backward(dy, cache):
    """dy (N, C, H, W) -> (dx (N, C, H, W), dgamma (C,), dbeta (C,)).

    eval: dx = dy * gamma * invstd. training: mean and var depend on x too, and with M = N*H*W
    dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)), sums over (N, H, W).
    """
    fn = "batch_norm2d_backward"
    _cache(fn, cache, BatchNormCache, "batch_norm2d")
    xhat, invstd, gamma, training = cache
    check_float_array(fn, "dy", dy, like=("the forward's x", xhat))
    _same_shape(fn, "dy", dy, xhat.shape, "the forward's output shape")
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    if not training:
        return dy * (gamma * invstd)[:, None, None], dgamma, dbeta
    m = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
    dx = (gamma * invstd / m)[:, None, None] * (m * dy - dbeta[:, None, None] - xhat * dgamma[:, None, None])
    return dx, dgamma, dbeta


# ---------------------------------------------------------------------------------------------
# relu


def relu(x):
    """max(x, 0), any shape."""
    check_float_array("relu", "x", x)
    return np.maximum(x, x.dtype.type(0))


def relu_backward(dy, x):
    """dy, x (the forward's input), same shape -> dx = dy where x > 0, else 0 (0 at x == 0, as torch)."""
    fn = "relu_backward"
    check_float_array(fn, "x", x)
    check_float_array(fn, "dy", dy, like=("x", x))
    _same_shape(fn, "dy", dy, x.shape, "the shape of x")
    return np.where(x > 0, dy, dy.dtype.type(0))


def relu6(x):
    """min(max(x, 0), 6), any shape (MobileNetV2)."""
    check_float_array("relu6", "x", x)
    return np.clip(x, x.dtype.type(0), x.dtype.type(6))


def relu6_backward(dy, y):
    """dy, y (the forward's input or output), same shape -> dx = dy where 0 < y < 6, else 0 (torch's
    hardtanh: 0 at both ends)."""
    fn = "relu6_backward"
    check_float_array(fn, "y", y)
    check_float_array(fn, "dy", dy, like=("y", y))
    _same_shape(fn, "dy", dy, y.shape, "the shape of y")
    return np.where((y > 0) & (y < 6), dy, dy.dtype.type(0))


# ---------------------------------------------------------------------------------------------
# MobileNetV3's activations: hardswish, hardsigmoid (piecewise-linear stand-ins for swish and the
# sigmoid, cheap on a phone), and the sigmoid itself (LR-ASPP's channel scale)


def hardsigmoid(x):
    """relu6(x + 3) / 6: 0 below -3, 1 above 3, linear between. Any shape."""
    check_float_array("hardsigmoid", "x", x)
    return np.clip(x + x.dtype.type(3), 0, 6) / x.dtype.type(6)


def hardsigmoid_backward(dy, x):
    """dy, x (the forward's input) -> dx = dy / 6 where -3 < x < 3, else 0 (as torch)."""
    fn = "hardsigmoid_backward"
    check_float_array(fn, "x", x)
    check_float_array(fn, "dy", dy, like=("x", x))
    _same_shape(fn, "dy", dy, x.shape, "the shape of x")
    return np.where((x > -3) & (x < 3), dy / dy.dtype.type(6), dy.dtype.type(0))


def hardswish(x):
    """x * hardsigmoid(x) = x * relu6(x + 3) / 6. Any shape."""
    check_float_array("hardswish", "x", x)
    return x * (np.clip(x + x.dtype.type(3), 0, 6) / x.dtype.type(6))


def hardswish_backward(dy, x):
    """dy, x (the forward's input) -> dx = dy * (0 for x <= -3, x / 3 + 1/2 for -3 < x < 3, 1 for x >= 3):
    at the kinks the outer pieces' slopes, as torch."""
    fn = "hardswish_backward"
    check_float_array(fn, "x", x)
    check_float_array(fn, "dy", dy, like=("x", x))
    _same_shape(fn, "dy", dy, x.shape, "the shape of x")
    t = x.dtype.type
    slope = np.where(x <= -3, t(0), np.where(x < 3, x / t(3) + t(0.5), t(1)))
    return dy * slope


def sigmoid(x):
    """1 / (1 + exp(-x)), without overflow for large |x|. Any shape."""
    check_float_array("sigmoid", "x", x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_backward(dy, y):
    """dy, y (the forward's OUTPUT) -> dx = dy * y * (1 - y)."""
    fn = "sigmoid_backward"
    check_float_array(fn, "y", y)
    check_float_array(fn, "dy", dy, like=("y", y))
    _same_shape(fn, "dy", dy, y.shape, "the shape of y")
    return dy * y * (1 - y)


# ---------------------------------------------------------------------------------------------
# max pooling


class MaxPoolCache(NamedTuple):
    """What ``max_pool2d_backward`` needs."""

    indices: np.ndarray  # (N, C, Ho, Wo) int64: where each max came from, a flat index into the H*W
                         # plane of its (n, c) (what torch's max_pool2d(return_indices=True) gives)
    input_shape: tuple   # (N, C, H, W)


def pool_output_size(size, kernel, stride, padding, ceil_mode=False, fn="pool_output_size") -> int:
    """Output length of one axis, as torch: (size + 2p - kernel) / stride + 1 rounded down, or up with
    ``ceil_mode`` except that a last window starting in the right padding is dropped."""
    size, kernel, stride = (check_int(fn, n, v, 1) for n, v in (("size", size), ("kernel", kernel), ("stride", stride)))
    padding, ceil_mode = check_int(fn, "padding", padding, 0), check_flag(fn, "ceil_mode", ceil_mode)
    if padding > kernel // 2:
        raise ValueError(f"{fn}: padding must be at most kernel // 2 = {kernel // 2} (as torch), got {padding}")
    span = size + 2 * padding - kernel
    if span < 0:
        raise ValueError(f"{fn}: kernel {kernel} is larger than the padded input {size} + 2*{padding}")
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # that window would start in the right padding and see no input
    return out


def max_pool2d(x, kernel=3, stride=2, padding=1, ceil_mode=False):
    """Max over kernel x kernel windows, padded with -inf. x (N, C, H, W) -> (y (N, C, Ho, Wo), MaxPoolCache).

    The max is taken over the real pixels of a window; ties go to the first in scan order (row by row),
    and a NaN wins (the last NaN of the window), as in torch.
    """
    fn = "max_pool2d"
    check_float_array(fn, "x", x, 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    Ho = pool_output_size(H, kernel, stride, padding, ceil_mode, fn)
    Wo = pool_output_size(W, kernel, stride, padding, ceil_mode, fn)
    k, s, p = kernel, stride, padding
    # pad with -inf on top/left, and on bottom/right as far as the last window reaches (a ceil_mode
    # window may hang over the padding); ``real`` marks the input pixels of the padded plane
    Hp, Wp = max((Ho - 1) * s + k, H + p), max((Wo - 1) * s + k, W + p)
    xpad = np.full((N, C, Hp, Wp), -np.inf, dtype=x.dtype)
    xpad[:, :, p:p + H, p:p + W] = x
    real = np.zeros((Hp, Wp), dtype=bool)
    real[p:p + H, p:p + W] = True

    def windows(a):  # (..., Hp, Wp) -> (..., Ho, Wo, k*k), each window flattened in scan order
        v = np.lib.stride_tricks.sliding_window_view(a, (k, k), axis=(-2, -1))[..., ::s, ::s, :, :][..., :Ho, :Wo, :, :]
        return v.reshape(v.shape[:-2] + (k * k,))

    win, real = windows(xpad), windows(real)
    y = win.max(axis=-1)
    first = np.argmax((win == y[..., None]) & real, axis=-1)  # first real pixel equal to the max
    nan = np.isnan(y)
    if nan.any():  # win == NaN is never true: take the last NaN of the window instead
        last_nan = k * k - 1 - np.argmax(np.isnan(win[..., ::-1]), axis=-1)
        first = np.where(nan, last_nan, first)
    rows = np.arange(Ho)[:, None] * s - p + first // k  # back to input coordinates
    cols = np.arange(Wo)[None, :] * s - p + first % k
    return y, MaxPoolCache((rows * W + cols).astype(np.int64), (N, C, H, W))


def max_pool2d_infer(x, kernel=3, stride=2, padding=1, ceil_mode=False):
    """``max_pool2d``'s y alone (for eval: no argmax to record): x (N, C, H, W) -> (N, C, Ho, Wo).
    One ``np.maximum`` per kernel tap over the outputs whose window tap is real input (NaN wins)."""
    fn = "max_pool2d_infer"
    check_float_array(fn, "x", x, 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    Ho = pool_output_size(H, kernel, stride, padding, ceil_mode, fn)
    Wo = pool_output_size(W, kernel, stride, padding, ceil_mode, fn)
    k, s, p = kernel, stride, padding
    y = np.full((N, C, Ho, Wo), -np.inf, dtype=x.dtype)
    for i in range(k):
        ylo, yhi = _tap_range(H, Ho, i - p, s)
        for j in range(k):
            xlo, xhi = _tap_range(W, Wo, j - p, s)
            if yhi <= ylo or xhi <= xlo:
                continue
            win = x[:, :, ylo * s + i - p:(yhi - 1) * s + i - p + 1:s, xlo * s + j - p:(xhi - 1) * s + j - p + 1:s]
            part = y[:, :, ylo:yhi, xlo:xhi]
            np.maximum(part, win, out=part)
    return y


def max_pool2d_backward(dy, cache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each dy goes to the pixel its max came from (summed where
    overlapping windows picked the same pixel)."""
    fn = "max_pool2d_backward"
    _cache(fn, cache, MaxPoolCache, "max_pool2d")
    check_float_array(fn, "dy", dy)
    _same_shape(fn, "dy", dy, cache.indices.shape, "the forward's output shape")
    N, C, H, W = cache.input_shape
    dx = np.zeros((N * C, H * W), dtype=dy.dtype)
    planes = np.arange(N * C)[:, None]
    np.add.at(dx, (planes, cache.indices.reshape(N * C, -1)), dy.reshape(N * C, -1))
    return dx.reshape(N, C, H, W)


# ---------------------------------------------------------------------------------------------
# global average pooling (the image-level branch of ASPP)


def global_avg_pool(x):
    """Mean over (H, W). x (N, C, H, W) -> (N, C, 1, 1)."""
    check_float_array("global_avg_pool", "x", x, 4, "(N, C, H, W)")
    return x.mean(axis=(2, 3), keepdims=True)


def global_avg_pool_backward(dy, input_shape):
    """dy (N, C, 1, 1), input_shape (N, C, H, W) -> dx (N, C, H, W) = dy / (H*W) everywhere."""
    fn = "global_avg_pool_backward"
    N, C, H, W = check_shape(fn, "input_shape", input_shape, 4)
    check_float_array(fn, "dy", dy)
    _same_shape(fn, "dy", dy, (N, C, 1, 1), "the forward's output shape for input_shape")
    return np.broadcast_to(dy / (H * W), (N, C, H, W)).copy()


# ---------------------------------------------------------------------------------------------
# bilinear resizing


def _bilinear_taps(in_size, out_size, align_corners):
    """The two neighbours i0, i1 (int64) each output pixel mixes and the weight w1 (float64) of i1."""
    o = np.arange(out_size, dtype=np.float64)
    if align_corners:
        src = o * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros(out_size)
    else:
        src = np.maximum((o + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0  # w1: weight of the right neighbour


def bilinear_matrix(in_size, out_size, align_corners) -> np.ndarray:
    """(out_size, in_size) float64 A with resize(v) = A @ v for a 1-D signal v, as torch's bilinear.

    Output pixel o samples the input at
      align_corners=True:  src = o * (in - 1) / (out - 1)   (corner pixel centres meet; 0 if out == 1)
      align_corners=False: src = (o + 0.5) * in / out - 0.5 (pixel areas meet), clamped at 0
    and mixes its two neighbours floor(src) and floor(src) + 1 (clamped at in - 1) linearly.
    """
    fn = "bilinear_matrix"
    in_size, out_size = check_int(fn, "in_size", in_size, 1), check_int(fn, "out_size", out_size, 1)
    align_corners = check_flag(fn, "align_corners", align_corners)
    i0, i1, w1 = _bilinear_taps(in_size, out_size, align_corners)
    A = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    A[rows, i0] += 1 - w1  # two statements: where i0 == i1 (the last input pixel) both weights add up
    A[rows, i1] += w1
    return A


def resize_bilinear(x, size, align_corners):
    """x (N, C, H, W), size (Ho, Wo) -> y (N, C, Ho, Wo) = Ah @ x @ Aw^T, as
    ``F.interpolate(x, size, mode="bilinear", align_corners=align_corners)`` (no antialiasing)."""
    fn = "resize_bilinear"
    check_float_array(fn, "x", x, 4, "(N, C, H, W)")
    Ho, Wo = check_shape(fn, "size", size, 2)
    align_corners = check_flag(fn, "align_corners", align_corners)
    Ah = bilinear_matrix(x.shape[2], Ho, align_corners).astype(x.dtype)
    Aw = bilinear_matrix(x.shape[3], Wo, align_corners).astype(x.dtype)
    return Ah @ x @ Aw.T


@numba.njit(cache=True)
def _resize_2tap(x, out, i0, i1, wy, j0, j1, wx):
    """out[n, c, y, q] = sum of the 2 x 2 neighbours' weighted values: rows first (into one row
    buffer), then columns. wy, wx: the weights of i1, j1 (those of i0, j0 are 1 - w)."""
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    row = np.empty(W, dtype=x.dtype)
    one = x.dtype.type(1)
    for n in range(N):
        for c in range(C):
            for y in range(Ho):
                a, b, w = x[n, c, i0[y]], x[n, c, i1[y]], wy[y]
                for q in range(W):
                    row[q] = (one - w) * a[q] + w * b[q]
                o = out[n, c, y]
                for q in range(Wo):
                    o[q] = (one - wx[q]) * row[j0[q]] + wx[q] * row[j1[q]]


def resize_bilinear_infer(x, size, align_corners):
    """``resize_bilinear`` computed from the 2 x 2 neighbours of each output pixel (what the two
    matrices' nonzeros say), rows then columns, as torch does: the same numbers up to rounding for finite
    input, a fraction of the work. Only the neighbours enter, so a NaN or inf reaches the outputs next to
    it, as in torch (the matrices' 0 * inf spreads it along whole rows and columns). Under
    NUMBA_DISABLE_JIT the same two steps run as whole-array NumPy (the loop would run per pixel in Python)."""
    fn = "resize_bilinear_infer"
    check_float_array(fn, "x", x, 4, "(N, C, H, W)")
    Ho, Wo = check_shape(fn, "size", size, 2)
    align_corners = check_flag(fn, "align_corners", align_corners)
    i0, i1, wy = _bilinear_taps(x.shape[2], Ho, align_corners)
    j0, j1, wx = _bilinear_taps(x.shape[3], Wo, align_corners)
    one = x.dtype.type(1)
    if numba.config.DISABLE_JIT:
        wy, wx = wy.astype(x.dtype)[:, None], wx.astype(x.dtype)
        rows = (one - wy) * x[:, :, i0] + wy * x[:, :, i1]
        return (one - wx) * rows[..., j0] + wx * rows[..., j1]
    out = np.empty(x.shape[:2] + (Ho, Wo), dtype=x.dtype)
    _resize_2tap(np.ascontiguousarray(x), out, i0, i1, wy.astype(x.dtype), j0, j1, wx.astype(x.dtype))
    return out


def resize_bilinear_backward(dy, input_shape, align_corners):
    """dy (N, C, Ho, Wo), input_shape (N, C, H, W) -> dx (N, C, H, W) = Ah^T @ dy @ Aw."""
    fn = "resize_bilinear_backward"
    N, C, H, W = check_shape(fn, "input_shape", input_shape, 4)
    check_float_array(fn, "dy", dy, 4, "(N, C, Ho, Wo)")
    if dy.shape[:2] != (N, C):
        raise ValueError(f"{fn}: dy has shape {dy.shape}, expected (N, C) = {(N, C)} as in input_shape")
    align_corners = check_flag(fn, "align_corners", align_corners)
    Ah = bilinear_matrix(H, dy.shape[2], align_corners).astype(dy.dtype)
    Aw = bilinear_matrix(W, dy.shape[3], align_corners).astype(dy.dtype)
    return Ah.T @ dy @ Aw


# ---------------------------------------------------------------------------------------------
# concatenation


def concat(xs, axis=1):
    """Join arrays along ``axis`` (channels by default); all other axes must agree.
    xs: a list of (N, C_i, H, W) -> (N, sum C_i, H, W)."""
    fn = "concat"
    if not isinstance(xs, (list, tuple)) or len(xs) == 0:
        raise ValueError(f"{fn}: xs must be a non-empty list of arrays, got {type(xs).__name__}"
                         + (" of length 0" if isinstance(xs, (list, tuple)) else ""))
    check_float_array(fn, "xs[0]", xs[0])
    nd = xs[0].ndim
    if not is_int(axis) or not -nd <= axis < nd:
        raise ValueError(f"{fn}: axis must be an int in [{-nd}, {nd}) for {nd}-D arrays, got {axis!r}")
    axis = int(axis) % nd
    for i, a in enumerate(xs[1:], start=1):
        check_float_array(fn, f"xs[{i}]", a, like=("xs[0]", xs[0]))
        if a.ndim != nd or any(a.shape[d] != xs[0].shape[d] for d in range(nd) if d != axis):
            expected = ", ".join("*" if d == axis else str(n) for d, n in enumerate(xs[0].shape))
            raise ValueError(f"{fn}: xs[{i}] has shape {a.shape}, expected ({expected}) "
                             f"(the shape of xs[0] on every axis but axis {axis})")
    return np.concatenate(xs, axis=axis)


def concat_backward(dy, sizes, axis=1):
    """Split dy back: sizes (the C_i of the inputs) -> a list of arrays, the i-th of size sizes[i] on ``axis``."""
    fn = "concat_backward"
    check_float_array(fn, "dy", dy)
    nd = dy.ndim
    if not is_int(axis) or not -nd <= axis < nd:
        raise ValueError(f"{fn}: axis must be an int in [{-nd}, {nd}) for {nd}-D dy, got {axis!r}")
    if (not isinstance(sizes, (list, tuple)) or len(sizes) == 0
            or not all(is_int(s) and s >= 1 for s in sizes)):
        raise ValueError(f"{fn}: sizes must be a non-empty list of ints >= 1, got {sizes!r}")
    if sum(sizes) != dy.shape[axis]:
        raise ValueError(f"{fn}: sizes {list(sizes)} add up to {sum(sizes)}, but dy has shape {dy.shape}, "
                         f"{dy.shape[axis]} along axis {axis}")
    return [part.copy() for part in np.split(dy, np.cumsum(sizes)[:-1], axis=axis)]


# ---------------------------------------------------------------------------------------------
# dropout


def dropout(x, p, training, rng):
    """Inverted dropout: zero each value with probability p and scale the rest by 1 / (1 - p), so that
    the expectation is unchanged and eval is the identity.

    x any shape, rng a ``np.random.Generator`` (may be None in eval) -> (y, mask), y = x * mask, where
    mask holds 0 or 1 / (1 - p) in x's dtype; mask is None in eval.
    """
    fn = "dropout"
    check_float_array(fn, "x", x)
    p = check_real(fn, "p", p, 0, 1, hi_open=True)
    if not check_flag(fn, "training", training):
        return x.copy(), None
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{fn}: rng must be a numpy.random.Generator (np.random.default_rng(seed)) "
                         f"when training, got {type(rng).__name__}")
    keep = rng.random(x.shape) >= p  # True with probability 1 - p
    mask = keep.astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, mask


def dropout_backward(dy, mask):
    """dy and the forward's mask (same shape, or None for eval) -> dx = dy * mask."""
    fn = "dropout_backward"
    check_float_array(fn, "dy", dy)
    if mask is None:
        return dy.copy()
    check_float_array(fn, "mask", mask, like=("dy", dy))
    _same_shape(fn, "mask", mask, dy.shape, "the shape of dy")
    return dy * mask


# ---------------------------------------------------------------------------------------------
# depthwise separable convolution


def _check_separable(fn, x, depthwise_weight, pointwise_weight, rate, padding, stride, dout=None):
    check_float_array(fn, "x", x, 4, "(N, C, H, W)")
    check_float_array(fn, "depthwise_weight", depthwise_weight, 4, "(C, 1, kh, kw)", like=("x", x))
    check_float_array(fn, "pointwise_weight", pointwise_weight, 4, "(Cout, C, 1, 1)", like=("x", x))
    N, C = x.shape[:2]
    dw, pw = depthwise_weight.shape, pointwise_weight.shape
    if dw[:2] != (C, 1):
        raise ValueError(f"{fn}: depthwise_weight has shape {dw}, expected ({C}, 1, kh, kw) "
                         f"(one kernel per channel of x)")
    if pw[1:] != (C, 1, 1):
        raise ValueError(f"{fn}: pointwise_weight has shape {pw}, expected (Cout, {C}, 1, 1)")
    # rate, stride, padding and the output size: the depthwise conv's checks
    g = check_conv2d(fn, x, depthwise_weight, None, rate, stride, padding, groups=C)
    if dout is not None:
        check_float_array(fn, "dout", dout, like=("x", x))
        _same_shape(fn, "dout", dout, (N, pw[0], g.Ho, g.Wo), "the forward's output shape")


def separable_conv2d(x, depthwise_weight, pointwise_weight, rate=1, stride=1, padding="same"):
    """Depthwise atrous conv (each channel its own kh x kw kernel) then a pointwise 1x1 conv mixing channels.

    x (N, C, H, W), depthwise_weight (C, 1, kh, kw), pointwise_weight (Cout, C, 1, 1) -> (N, Cout, Ho, Wo).
    rate, padding, stride apply to the depthwise conv, as in ``atrous_conv2d``. No bias.
    """
    fn = "separable_conv2d"
    _check_separable(fn, x, depthwise_weight, pointwise_weight, rate, padding, stride)
    h = atrous_conv2d(x, depthwise_weight, None, rate, stride, padding, groups=x.shape[1])
    return atrous_conv2d(h, pointwise_weight, None, 1, 1, 0)


def separable_conv2d_backward(dout, x, depthwise_weight, pointwise_weight, rate=1, stride=1, padding="same"):
    """dout (N, Cout, Ho, Wo) -> (dx, d_depthwise, d_pointwise) shaped like x and the two weights.
    Recomputes the depthwise output, then backpropagates through the 1x1 conv and the depthwise one."""
    fn = "separable_conv2d_backward"
    _check_separable(fn, x, depthwise_weight, pointwise_weight, rate, padding, stride, dout)
    C = x.shape[1]
    h = atrous_conv2d(x, depthwise_weight, None, rate, stride, padding, groups=C)
    dh, d_pointwise, _ = atrous_conv2d_backward(dout, h, pointwise_weight, 1, 1, 0)
    dx, d_depthwise, _ = atrous_conv2d_backward(dh, x, depthwise_weight, rate, stride, padding, groups=C)
    return dx, d_depthwise, d_pointwise


# ---------------------------------------------------------------------------------------------
# loss


def softmax_cross_entropy(logits, target, ignore_index=255):
    """Mean over the pixels whose label is not ``ignore_index`` of -log softmax(logits)[label], as
    ``F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="mean")``.

    logits (N, C, H, W) float, target (N, H, W) integer labels in [0, C) or ignore_index
    -> (loss, dlogits): loss a scalar of logits' dtype, dlogits (N, C, H, W) its gradient,
    (softmax - onehot(target)) / #counted on counted pixels, 0 on ignored ones.
    Every pixel ignored: loss is NaN (0 / 0) and dlogits all 0, as torch.
    log softmax = logits - max - log(sum(exp(logits - max))): no overflow.
    """
    fn = "softmax_cross_entropy"
    check_float_array(fn, "logits", logits, 4, "(N, C, H, W)")
    N, C, H, W = logits.shape
    if not isinstance(target, np.ndarray):
        raise ValueError(f"{fn}: target must be a numpy array, got {type(target).__name__}")
    if not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"{fn}: target has dtype {target.dtype}, expected an integer dtype (class labels)")
    _same_shape(fn, "target", target, (N, H, W), "(N, H, W) of logits")
    if not is_int(ignore_index):
        raise ValueError(f"{fn}: ignore_index must be an int, got {ignore_index!r}")
    t = target.astype(np.int64)
    counted = t != ignore_index
    bad = counted & ((t < 0) | (t >= C))
    if bad.any():
        n, y, x = np.argwhere(bad)[0]
        raise ValueError(f"{fn}: target has label {t[n, y, x]} at (n, y, x) = {(int(n), int(y), int(x))}, "
                         f"expected a label in [0, {C}) or ignore_index={ignore_index}")

    count = int(counted.sum())
    if count == 0:
        return logits.dtype.type(np.nan), np.zeros_like(logits)

    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    sum_e = e.sum(axis=1, keepdims=True)
    t = np.where(counted, t, 0)[:, None]  # any class for ignored pixels: they are masked out below
    nll = np.log(sum_e) - np.take_along_axis(shifted, t, axis=1)  # (N, 1, H, W): -log p[label]
    dlogits = e / sum_e
    np.put_along_axis(dlogits, t, np.take_along_axis(dlogits, t, axis=1) - 1, axis=1)  # softmax - onehot
    loss = nll[:, 0][counted].sum() / count
    dlogits *= counted[:, None] / logits.dtype.type(count)
    return logits.dtype.type(loss), dlogits
