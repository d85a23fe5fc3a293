"""PyTorch twins of ``minideeplab.scratch.layers``: same names and arguments, torch tensors in and out.

Forward only: autograd gives every backward. No argument checks beyond torch's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minideeplab.specs.conv import resolve_padding


def batch_norm2d(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """``F.batch_norm``; when training it updates running_mean and running_var in place."""
    return F.batch_norm(x, running_mean, running_var, gamma, beta, training, momentum, eps)


def relu(x):
    return F.relu(x)


def relu6(x):
    return F.relu6(x)


def hardsigmoid(x):
    """relu6(x + 3) / 6, F.hardsigmoid's values; written out because F.hardsigmoid's float64 backward
    multiplies by a float32 1/6 (3e-8 off), and autograd of this form is exact."""
    return F.relu6(x + 3) / 6


def hardswish(x):
    return F.hardswish(x)


def sigmoid(x):
    return torch.sigmoid(x)


def max_pool2d(x, kernel=3, stride=2, padding=1, ceil_mode=False):
    """-> (y, indices), indices flat into each H*W plane, like the scratch cache's ``indices``."""
    return F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)


def global_avg_pool(x):
    """(N, C, H, W) -> (N, C, 1, 1)."""
    return F.adaptive_avg_pool2d(x, 1)


def resize_bilinear(x, size, align_corners):
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def concat(xs, axis=1):
    return torch.cat(list(xs), dim=axis)


def dropout(x, p, training, keep=None):
    """``F.dropout``, or, given ``keep`` (bool, shape of x), the same computation with that mask:
    x * (keep / (1 - p)), torch's own formula. Identity in eval."""
    if keep is None or not training:
        return F.dropout(x, p, training)
    return x * (keep.to(x.dtype) / (1 - p))


def separable_conv2d(x, depthwise_weight, pointwise_weight, rate=1, stride=1, padding="same"):
    """Depthwise ``F.conv2d(groups=C, dilation=rate)`` then a 1x1 ``F.conv2d``; no bias."""
    kh, kw = depthwise_weight.shape[2:]
    pad = (resolve_padding(padding, kh, rate), resolve_padding(padding, kw, rate))
    h = F.conv2d(x, depthwise_weight, stride=stride, padding=pad, dilation=rate, groups=x.shape[1])
    return F.conv2d(h, pointwise_weight)


def softmax_cross_entropy(logits, target, ignore_index=255):
    """The loss tensor (0-D) of ``F.cross_entropy(reduction="mean")``; target of any integer dtype."""
    return F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="mean")
