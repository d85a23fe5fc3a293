"""PyTorch twins of ``minideeplab.scratch.aspp``: ``nn.Module``s built from the same specs.

``ASPPModule`` has torchvision's ``ASPP`` layout (``convs.{i}``, ``project``), so its ``state_dict`` keys
are the scratch names below an empty prefix, and torchvision's ``classifier.0`` loads into it by name;
with ``separable=True`` the 3x3 branches are smp's ``SeparableConv2d`` (``.0`` depthwise, ``.1``
pointwise). ``ASPPLModule`` is DeepLab v2's ASPP-L: with ``fc_channels=None`` the released ResNet-101's
(``branches.{i}`` one 3x3 conv to the classes, Caffe's ``fc1_voc12_c{i}``), else the VGG-16 one
(``branches.{i}.fc6/fc7/fc8``). Autograd gives every backward.

``Dropout`` is ``nn.Dropout`` that can replay a given mask (``keep``): ``set_dropout_masks(module,
masks)`` hands it the masks a scratch forward drew (its cache's ``masks``), so that a training forward
of the twin is the scratch one, dropout included.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minideeplab.reference import layers as ref_layers
from minideeplab.specs.aspp import ASPP, ASPPL
from minideeplab.specs.deeplab import SCORE_STD, is_score_layer

__all__ = ["Dropout", "set_dropout_masks", "SeparableConv2d", "conv_unit", "ASPPPooling", "ASPPModule",
           "ASPPLModule", "build_aspp", "init_module"]


class Dropout(nn.Dropout):
    """``nn.Dropout``; when training with ``keep`` (a bool tensor shaped like the input) set, it
    applies that mask instead of drawing one: x * keep / (1 - p), torch's own formula."""

    keep: torch.Tensor | None = None

    def forward(self, x):
        if self.training and self.keep is not None and self.p > 0:
            return ref_layers.dropout(x, self.p, True, self.keep)
        return super().forward(x)


def set_dropout_masks(module: nn.Module, masks: dict) -> nn.Module:
    """Give each ``Dropout`` of ``module`` named in ``masks`` (name -> numpy mask, zero where dropped, as
    the scratch caches keep them) that mask; the others draw their own (keep None). Returns the module."""
    found = {name: m for name, m in module.named_modules() if isinstance(m, Dropout)}
    unknown = [k for k in masks if k not in found]
    if unknown:
        raise ValueError(f"set_dropout_masks: no Dropout named {unknown[0]!r} in the module; "
                         f"it has {sorted(found)}")
    for name, m in found.items():
        m.keep = torch.from_numpy(np.asarray(masks[name]) != 0) if name in masks else None
    return module


class SeparableConv2d(nn.Sequential):
    """Depthwise k x k at ``dilation`` (groups = channels), then pointwise 1x1; no bias (smp's layout)."""

    def __init__(self, cin, cout, kernel=3, dilation=1):
        super().__init__(nn.Conv2d(cin, cin, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                                   groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False))


def conv_unit(cin, cout, kernel, dilation=1, separable=False) -> nn.Sequential:
    """Sequential(conv (no bias, "same" padding) or SeparableConv2d, BN, ReLU): ``.0``, ``.1``, ``.2``."""
    conv = (SeparableConv2d(cin, cout, kernel, dilation) if separable else
            nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


class ASPPPooling(nn.Sequential):
    """Image pooling: AdaptiveAvgPool2d(1), 1x1 conv, BN, ReLU, then bilinear back to the input's size."""

    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


def init_module(module, prefix=""):
    """The scratch init's scheme, for modules built here: Kaiming normal (fan-out, per group), biases 0;
    class-score convs (``specs.deeplab.is_score_layer`` of ``prefix``.name, the model's names) N(0, 0.01).
    Marks the module ``initialised``."""
    for name, m in module.named_modules(prefix=prefix):
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            nn.init.normal_(m.weight, 0.0, SCORE_STD if is_score_layer(name) else (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    module.initialised = True


class ASPPModule(nn.Module):
    """torchvision's ASPP (``convs``, ``project``) from an ``ASPP`` spec, separable or not, with or
    without image pooling."""

    def __init__(self, spec: ASPP):
        super().__init__()
        if not isinstance(spec, ASPP):
            raise ValueError(f"ASPPModule: spec must be an ASPP, got {type(spec).__name__}")
        self.spec = spec
        cin, cout = spec.in_channels, spec.out_channels
        convs = [conv_unit(cin, cout, 1)]
        convs += [conv_unit(cin, cout, 3, r, spec.separable) for r in spec.atrous_rates]
        if spec.image_pooling:
            convs.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(convs)
        self.project = nn.Sequential(nn.Conv2d(spec.num_branches * cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(), Dropout(spec.dropout))
        init_module(self)

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class _ASPPLBranch(nn.Module):
    def __init__(self, cin, fc, classes, rate, p):
        super().__init__()
        self.fc6 = nn.Conv2d(cin, fc, 3, padding=rate, dilation=rate)
        self.drop6 = Dropout(p)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop7 = Dropout(p)
        self.fc8 = nn.Conv2d(fc, classes, 1)

    def forward(self, x):
        return self.fc8(self.drop7(F.relu(self.fc7(self.drop6(F.relu(self.fc6(x)))))))


class ASPPLModule(nn.Module):
    """DeepLab v2's ASPP-L, the branches' logits summed. fc_channels None (released ResNet-101):
    ``branches.{i}`` = Conv2d(in, classes, 3, dilation=rate i, bias). Else (VGG-16): ``branches.{i}`` fc6
    (3x3 at rate i) -> ReLU -> drop6 -> fc7 -> ReLU -> drop7 -> fc8."""

    def __init__(self, spec: ASPPL):
        super().__init__()
        if not isinstance(spec, ASPPL):
            raise ValueError(f"ASPPLModule: spec must be an ASPPL, got {type(spec).__name__}")
        self.spec = spec
        if spec.has_fc:
            self.branches = nn.ModuleList(_ASPPLBranch(spec.in_channels, spec.fc_channels, spec.num_classes, r,
                                                       spec.dropout) for r in spec.atrous_rates)
        else:
            self.branches = nn.ModuleList(nn.Conv2d(spec.in_channels, spec.num_classes, 3, padding=r, dilation=r)
                                          for r in spec.atrous_rates)
        init_module(self)

    def forward(self, x):
        y = None
        for b in self.branches:
            y = b(x) if y is None else y + b(x)
        return y


def build_aspp(spec) -> nn.Module:
    """``ASPPModule`` or ``ASPPLModule`` for the spec."""
    if isinstance(spec, ASPP):
        return ASPPModule(spec)
    if isinstance(spec, ASPPL):
        return ASPPLModule(spec)
    raise ValueError(f"build_aspp: spec must be an ASPP or ASPPL, got {type(spec).__name__}")
