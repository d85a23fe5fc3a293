"""Receptive fields measured with PyTorch: backpropagate from one output pixel, read the input gradient.

The twin of ``minideeplab.scratch.receptive``, sharing nothing with it but the layer
format and the padding rule: the stack is built as ``torch.nn.functional.conv2d`` layers with
all-ones weights, and the field is wherever the input gradient is non-zero. With positive
weights no two paths can cancel, so the non-zero set is exactly the set of sampled pixels and
the gradient value is the number of paths. ``stage_footprint`` does the same through the real
stages of a (twin) ResNet; ``input_footprint`` through any torch layer (attention, atrous convs), for one token.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minideeplab.reference.backbone import ResNetBackbone
from minideeplab.specs.backbone import ResNet
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


STAGES = ("layer1", "layer2", "layer3", "layer4")


def stage_footprint(spec: ResNet, stages=("layer4",), max_input: int = 1024) -> np.ndarray:
    """d (sum over channels of the middle output unit of ``stages``) / d (the first stage's input), summed
    over input channels, cropped to the unit's field: (size, size) float64 (computed in float32), > 0 exactly
    where the unit reads.

    Every conv weight is replaced by its absolute value normalised to sum 1 per output channel, BN is in
    eval mode with its initial statistics (a positive scale) and the input is all ones: every activation is
    positive, every ReLU passes, and each path from an input pixel adds a positive amount to the gradient.
    The input is sized from the convs' dilations and strides, and doubled while the field touches its border.
    Runs on one torch thread (these maps are small; two threads only wait for each other on a busy machine);
    results are cached per (spec, stages), a fresh copy is returned each time."""
    if not isinstance(spec, ResNet):
        raise ValueError(f"stage_footprint: spec must be a ResNet, got {type(spec).__name__}")
    stages = tuple(stages) if isinstance(stages, (tuple, list)) else (stages,)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _stage_footprint(spec, stages, max_input).copy()
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=32)
def _stage_footprint(spec, stages, max_input):
    fn = "stage_footprint"
    if not stages or any(s not in STAGES for s in stages) or \
            [STAGES.index(s) for s in stages] != list(range(STAGES.index(stages[0]), STAGES.index(stages[0]) + len(stages))):
        raise ValueError(f"{fn}: stages must be consecutive names from {STAGES}, got {stages!r}")
    model = ResNetBackbone(spec).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight.abs()
                m.weight.copy_(w / w.sum(dim=(1, 2, 3), keepdim=True))
    stack = nn.Sequential(*(getattr(model, s) for s in stages))
    reach, jump = 0, 1  # an upper bound of the half-width of the field, read off the modules, to size the input
    for m in stack.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1:  # a strided 1x1 (downsample) repeats its block's stride
            reach += m.dilation[0] * (m.kernel_size[0] // 2) * jump
            jump *= m.stride[0]
    cin = spec.stages[STAGES.index(stages[0])][0].in_channels
    n = 2 * (reach + jump) + 3  # the middle output unit sits within a jump of the middle of the input
    while n <= max_input:
        x = torch.ones(1, cin, n, n, requires_grad=True)
        y = stack(x)
        i = y.shape[2] // 2
        y[0, :, i, i].sum().backward()
        g = x.grad[0].sum(0).double().numpy()
        rows, cols = np.nonzero(g.any(axis=1))[0], np.nonzero(g.any(axis=0))[0]
        if rows[0] > 0 and cols[0] > 0 and rows[-1] < n - 1 and cols[-1] < n - 1:
            return g[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy()
        n *= 2
    raise ValueError(f"{fn}: the field of {stages} of {spec!r} does not fit in a {max_input}x{max_input} input")



# ---------------------------------------------------------------------------------------------
# the footprint of one token through any layer: attention against atrous convs (notebook 11)


def _tokens_to_map(t, hw):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *hw)


def _weight(rng, *shape):
    return torch.from_numpy(rng.standard_normal(shape) / np.sqrt(shape[-1]))


def attention_map_layer(channels, heads, rng, sr_ratio=1):
    """A layer x (B, C, H, W) -> (B, C, H, W), float64: the twin's multi-head self-attention over the map's
    tokens (SegFormer's efficient attention, keys and values from the map reduced R x R, when sr_ratio = R > 1);
    random weights from the NumPy Generator rng."""
    from minideeplab.reference.attention import self_attention

    C, w = channels, functools.partial(_weight, rng)
    if sr_ratio == 1:
        params = {"qkv.weight": w(3 * C, C), "qkv.bias": w(3 * C), "proj.weight": w(C, C), "proj.bias": w(C)}
    else:
        params = {"q.weight": w(C, C), "q.bias": w(C), "kv.weight": w(2 * C, C), "kv.bias": w(2 * C),
                  "proj.weight": w(C, C), "proj.bias": w(C), "sr.weight": w(C, C, sr_ratio, sr_ratio),
                  "sr.bias": w(C), "norm.weight": 1 + 0.1 * w(C), "norm.bias": w(C)}

    def layer(x):
        x = x.double()
        hw = tuple(x.shape[2:])
        return _tokens_to_map(self_attention(x.flatten(2).transpose(1, 2), params, heads, hw=hw, sr_ratio=sr_ratio),
                              hw)
    return layer


def neighbourhood_map_layer(channels, heads, kernel, rate, rng):
    """A layer x (B, C, H, W) -> (B, C, H, W), float64: q, k, v by one linear map of each token, the twin's
    dilated neighbourhood attention (kernel x kernel taps, rate apart), an output projection."""
    from minideeplab.reference.attention import neighbourhood_attention

    C = channels
    wqkv, wo = _weight(rng, 3 * C, C), _weight(rng, C, C)

    def layer(x):
        x = x.double()
        B, _, H, W = x.shape
        q, k, v = (x.flatten(2).transpose(1, 2) @ wqkv.T).reshape(B, H * W, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        out = neighbourhood_attention(q, k, v, (H, W), kernel, rate)       # (B, heads, N, C // heads)
        return _tokens_to_map(out.transpose(1, 2).reshape(B, H * W, C) @ wo.T, (H, W))
    return layer


def conv_map_layer(channels, kernel, rate, rng, groups=1):
    """A layer x (B, C, H, W) -> (B, C, H, W), float64: a kernel x kernel conv at rate, 'same' zero padding."""
    weight = torch.from_numpy(rng.standard_normal((channels, channels // groups, kernel, kernel)) /
                              (channels // groups * kernel))
    return lambda x: F.conv2d(x.double(), weight, padding=rate * (kernel // 2), dilation=rate, groups=groups)


def mix_ffn_map_layer(channels, hidden, rng):
    """SegFormer's Mix-FFN as a layer x (B, C, H, W) -> (B, C, H, W), float64: fc1, a depthwise 3x3 conv (zero
    padding), GELU, fc2 on each token."""
    fc1, fc2 = _weight(rng, hidden, channels), _weight(rng, channels, hidden)
    dw = conv_map_layer(hidden, 3, 1, rng, groups=hidden)

    def layer(x):
        h = torch.einsum("oc,bchw->bohw", fc1, x.double())
        return torch.einsum("co,bohw->bchw", fc2, F.gelu(dw(h)))
    return layer


def stack_layers(*layers):
    """The layers one after the other, first first."""
    def layer(x):
        for f in layers:
            x = f(x)
        return x
    return layer


def token_gradient(layer, x, token, _fn="token_gradient") -> np.ndarray:
    """|d (sum over channels of the output token (row, column)) / d x|, summed over x's channels: (H, W) float64
    for x (1, C, H, W)."""
    x = x.detach().clone().requires_grad_(True)
    out = layer(x)
    i, j = token
    if out.ndim != 4 or not (0 <= i < out.shape[2] and 0 <= j < out.shape[3]):
        raise ValueError(f"{_fn}: token {token!r} is outside the output of shape {tuple(out.shape)}")
    grad, = torch.autograd.grad(out[0, :, i, j].sum(), x)
    return grad[0].abs().sum(dim=0).double().numpy()


def input_footprint(layer, x, token) -> np.ndarray:
    """The input pixels one output token reads: layer maps x (1, C, H, W) to (1, C', H', W'); token (row, column)
    of its output -> (H, W) bool, True where the gradient of the token (all its channels) with respect to x (any
    channel) is non-zero. With random weights and a random x no two paths cancel exactly (the answer of exercise
    11.4): where ``token_gradient``, a sum of absolute values, is not zero."""
    return token_gradient(layer, x, token, "input_footprint") != 0
