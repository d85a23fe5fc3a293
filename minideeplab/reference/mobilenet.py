"""PyTorch twin of ``minideeplab.scratch.mobilenet``: MobileNetV3-Large's features as torchvision names them
in its segmentation models' ``backbone`` (``0`` stem, ``1``..``15`` blocks with their ``block.{j}`` parts,
``16`` last conv), built from a ``MobileNetV3`` spec; forward returns {"low_level", "low", "out"} as the
scratch forward does."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from minideeplab.reference.aspp import init_module
from minideeplab.reference.layers import hardsigmoid
from minideeplab.specs.mobilenet import MOBILENET_BN_EPS, MOBILENET_BN_MOMENTUM, MobileNetV3

__all__ = ["MobileNetV3Backbone"]

_ACTS = {"relu": nn.ReLU, "hardswish": nn.Hardswish}


def _unit(cin, cout, k, stride=1, dilation=1, groups=1, act=None) -> nn.Sequential:
    """conv (.0, no bias, "same" padding) -> BN (.1, eps 0.001, momentum 0.01) -> activation (.2, if any)."""
    layers = [nn.Conv2d(cin, cout, k, stride, dilation * (k - 1) // 2, dilation, groups, bias=False),
              nn.BatchNorm2d(cout, eps=MOBILENET_BN_EPS, momentum=MOBILENET_BN_MOMENTUM)]
    return nn.Sequential(*layers, *([_ACTS[act]()] if act else []))


class _SqueezeExcitation(nn.Module):
    """x * hardsigmoid(fc2(ReLU(fc1(avgpool(x))))), fc1 and fc2 1x1 convs with bias."""

    def __init__(self, channels, squeeze):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * hardsigmoid(s)


class _InvertedResidual(nn.Module):
    """``block``: expand, depthwise, SE, project (as the plan has them), + x when ``plan.residual``."""

    def __init__(self, plan):
        super().__init__()
        parts = []
        for part in plan.parts:
            if part == "expand":
                parts.append(_unit(plan.in_channels, plan.expanded, 1, act=plan.activation))
            elif part == "depthwise":
                parts.append(_unit(plan.expanded, plan.expanded, plan.kernel, plan.stride, plan.dilation,
                                   plan.expanded, plan.activation))
            elif part == "se":
                parts.append(_SqueezeExcitation(plan.expanded, plan.squeeze))
            else:
                parts.append(_unit(plan.expanded, plan.out_channels, 1))
        self.block = nn.Sequential(*parts)
        self.residual = plan.residual

    def forward(self, x):
        y = self.block(x)
        return y + x if self.residual else y


class MobileNetV3Backbone(nn.Module):
    """torchvision's ``mobilenet_v3_large(dilated=...).features`` as its segmentation models hold it."""

    def __init__(self, spec: MobileNetV3):
        super().__init__()
        if not isinstance(spec, MobileNetV3):
            raise ValueError(f"MobileNetV3Backbone: spec must be a MobileNetV3, got {type(spec).__name__}")
        self.spec = spec
        self.add_module("0", _unit(3, spec.stem_width, 3, 2, act="hardswish"))
        for i, plan in enumerate(spec.blocks, start=1):
            self.add_module(str(i), _InvertedResidual(plan))
        self.add_module(str(len(spec.blocks) + 1),
                        _unit(spec.blocks[-1].out_channels, spec.last_channels, 1, act="hardswish"))
        init_module(self)

    def forward(self, x):
        features = {}
        for i, layer in enumerate(self.children()):
            x = layer(x)
            if i == self.spec.low_level_index:
                features["low_level"] = x
            elif i == self.spec.low_index:
                features["low"] = x
        features["out"] = x
        return features
