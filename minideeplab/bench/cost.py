"""What a DeepLab costs: multiply-adds (MACs) of its convolutions (and, in a transformer, its linear layers and
attention products), counted from shapes, and one timed forward pass.

Every count is read off forward hooks on the PyTorch twin: for each ``nn.Conv2d``, output elements x
(in_channels / groups) x kh x kw; for each ``nn.Linear``, output elements x in_features; for a module with a
``mult_adds(inputs, output)`` method (``reference.vit.AttentionCore``: q k^T and the weighted sum of v), what
it says. On the ``meta`` device that takes shapes only (no weights, no arithmetic).
Batch norm, LayerNorm, ReLU, GELU, softmax, pooling, resizing and residual sums are left out: a few operations
per element, negligible beside the convolutions and matrix products.

* ``conv_counts(module, x)``: {conv name: (MACs, output elements)} for one forward pass, in forward order.
* ``mult_adds(module, input_shape)``: MACs summed per top-level child (``backbone``, ``aspp``, ``decoder``,
  ``classifier``); ``model_mult_adds(name, ...)`` for the twin of ``scratch.build_model(name, ...)``.
* ``conv_macs(spec, size)``: MACs of every conv of a backbone spec (ResNet, VGG) on one (1, 3, size, size) image.
* ``forward_cost(spec, size)``: one real, timed forward pass of a backbone.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from minideeplab.reference.backbone import BACKBONES, build_backbone

__all__ = ["conv_counts", "mult_adds", "model_mult_adds", "conv_macs", "forward_cost"]


def conv_counts(module, x) -> dict[str, tuple[int, int]]:
    """{conv name: (MACs, output elements)} for ``module(x)`` (inference mode), in the order the convs ran (and
    the linear layers and attention products, see the module's docstring)."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"conv_counts: module must be a torch nn.Module, got {type(module).__name__}")
    counts, handles = {}, []
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            def hook(m, inputs, out, name=name):
                per_output = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                counts[name] = (out.numel() * per_output, out.numel())
        elif isinstance(m, nn.Linear):
            def hook(m, inputs, out, name=name):
                counts[name] = (out.numel() * m.in_features, out.numel())
        elif callable(getattr(m, "mult_adds", None)):
            def hook(m, inputs, out, name=name):
                counts[name] = (int(m.mult_adds(inputs, out)), out.numel())
        else:
            continue
        handles.append(m.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return counts


def mult_adds(module, input_shape) -> dict[str, int]:
    """{top-level child name: MACs of its convolutions} for one forward pass of ``module`` on a meta tensor
    of ``input_shape`` (build the module on the meta device: parameters elsewhere fail)."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"mult_adds: module must be a torch nn.Module, got {type(module).__name__}")
    parts: dict[str, int] = {}
    for name, (macs, _) in conv_counts(module, torch.empty(tuple(input_shape), device="meta")).items():
        part = name.split(".")[0]
        parts[part] = parts.get(part, 0) + macs
    return parts


def model_mult_adds(name, backbone=None, output_stride=None, num_classes=21, size=(513, 513), **options):
    """``mult_adds`` of the reference twin of ``build_model(name, backbone, output_stride, num_classes,
    **options)`` (eval mode, built on the meta device: no weights are allocated) on one (3, *size) image."""
    from minideeplab.reference.deeplab import build_model

    with torch.device("meta"):
        module = build_model(name, backbone, output_stride, num_classes, **options).eval()
    return mult_adds(module, (1, 3, *size))


def _check(fn, spec, size=None):
    if type(spec) not in BACKBONES:
        raise ValueError(f"{fn}: spec must be {' or '.join('a ' + t.__name__ for t in BACKBONES)}, "
                         f"got {type(spec).__name__}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer))
                             or size < spec.output_stride):
        raise ValueError(f"{fn}: size must be an int >= the output stride {spec.output_stride}, got {size!r}")


def conv_macs(spec, size: int) -> dict[str, int]:
    """{conv name: multiply-accumulates} of a backbone spec's twin (any of ``reference.backbone.BACKBONES``)
    for one (1, 3, size, size) image, in forward order; a conv
    costs N * Cout * Ho * Wo * (Cin/groups) * kh * kw (its output pixels times its weights per output).
    Batch norm, ReLU, max pool and the residual sums are not counted."""
    _check("conv_macs", spec, size)
    with torch.device("meta"):
        counts = conv_counts(build_backbone(spec).eval(), torch.zeros(1, 3, size, size))
    return {name: int(macs) for name, (macs, _) in counts.items()}


def forward_cost(spec, size: int, seed: int = 0, threads: int = 1) -> dict:
    """One timed forward pass of the twin (random weights, eval, float32, ``torch.inference_mode``) on a
    (1, 3, size, size) image, after a warm-up on a small one, on ``threads`` torch threads (default 1: on a
    shared machine two threads mostly wait for each other, and one thread times the work itself).
    Returns {"out": output shape (tuple), "seconds", "gmacs": total conv MACs / 1e9,
    "conv_mb": float32 megabytes (1e6 bytes) of all conv outputs}."""
    _check("forward_cost", spec, size)
    torch.manual_seed(seed)
    model = build_backbone(spec).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, 2 * spec.output_stride, 2 * spec.output_stride))  # kernels up
        t0 = time.perf_counter()
        with torch.inference_mode():
            features = model(x)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    with torch.device("meta"):  # the counts from shapes, outside the timing
        counts = conv_counts(build_backbone(spec).eval(), torch.zeros(1, 3, size, size))
    return {"out": tuple(features["out"].shape), "seconds": seconds,
            "gmacs": sum(m for m, _ in counts.values()) / 1e9,
            "conv_mb": sum(n for _, n in counts.values()) * 4 / 1e6}
