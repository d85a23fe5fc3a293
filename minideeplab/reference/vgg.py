"""PyTorch twin of ``minideeplab.scratch.vgg``: VGG-16 DeepLab-LargeFOV, forward returns {"low_level", "out"}."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from minideeplab.specs.backbone import VGG

__all__ = ["VGGLargeFOV"]


def _conv(cin, cout, k, stride, dilation, bias=False):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k - 1) // 2, dilation=dilation, bias=bias)


class VGGLargeFOV(nn.Module):
    """VGG-16 DeepLab-LargeFOV: ``features`` indexed as torchvision's vgg16 (3x3 max pools, padding 1,
    pool4/5 stride 1, conv5 dilation 2), then ``fc6`` (3x3, rate 12) and ``fc7`` (1x1), each with ReLU
    (not with ``spec.fc`` False: then ``out`` is pool5, DeepLab v2's VGG trunk)."""

    def __init__(self, spec: VGG):
        super().__init__()
        if not isinstance(spec, VGG):
            raise ValueError(f"VGGLargeFOV: spec must be a VGG, got {type(spec).__name__}")
        self.spec = spec
        features = []
        for layer in spec.layers:
            if not layer.name.startswith("features."):
                continue
            if layer.kind == "conv":
                features += [_conv(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.dilation, True),
                             nn.ReLU()]
            else:
                features.append(nn.MaxPool2d(layer.kernel, layer.stride, 1))
            assert f"features.{len(features) - (2 if layer.kind == 'conv' else 1)}" == layer.name
        self.features = nn.Sequential(*features)
        self.fc6 = self.fc7 = None
        if spec.fc:
            fc6, fc7 = spec.layers[-2:]
            self.fc6 = _conv(fc6.in_channels, fc6.out_channels, fc6.kernel, 1, fc6.dilation, True)
            self.fc7 = _conv(fc7.in_channels, fc7.out_channels, fc7.kernel, 1, fc7.dilation, True)
        self.low_index = int(spec.low_level_layer.split(".")[1]) + 1  # the ReLU after that conv
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        low = None
        for i, m in enumerate(self.features):
            x = m(x)
            if i == self.low_index:
                low = x
        return {"low_level": low, "out": x if self.fc6 is None else F.relu(self.fc7(F.relu(self.fc6(x))))}

