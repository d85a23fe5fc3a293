"""PyTorch twin of ``minideeplab.scratch.mobilenet_v2``: torchvision's MobileNetV2 ``features`` (its names, so
a torchvision ``mobilenet_v2`` state_dict without ``classifier`` loads with ``strict=True``), dilated as smp's
encoder; forward returns {"low_level": features.3, "out": features.18} as the scratch forward does."""

from __future__ import annotations

from torch import nn

from minideeplab.specs.mobilenet_v2 import InvertedResidualPlan, MobileNetV2

__all__ = ["InvertedResidual", "MobileNetV2Backbone"]


def _conv_bn_relu6(cin, cout, k, stride=1, dilation=1, groups=1):
    """torchvision's Conv2dNormActivation names: ``0`` conv (no bias), ``1`` BN, ``2`` ReLU6."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, dilation * (k - 1) // 2, dilation, groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    """``conv``: [1x1 expansion + BN + ReLU6], 3x3 depthwise + BN + ReLU6, 1x1 projection, BN; + x if residual."""

    def __init__(self, plan: InvertedResidualPlan):
        super().__init__()
        self.residual = plan.residual
        layers = [_conv_bn_relu6(plan.in_channels, plan.hidden, 1)] if plan.expand else []
        layers += [_conv_bn_relu6(plan.hidden, plan.hidden, 3, plan.stride, plan.dilation, plan.hidden),
                   nn.Conv2d(plan.hidden, plan.out_channels, 1, bias=False), nn.BatchNorm2d(plan.out_channels)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """torchvision's ``mobilenet_v2().features``, dilated as ``spec`` says (smp's convention)."""

    def __init__(self, spec: MobileNetV2):
        super().__init__()
        if not isinstance(spec, MobileNetV2):
            raise ValueError(f"MobileNetV2Backbone: spec must be a MobileNetV2, got {type(spec).__name__}")
        self.spec = spec
        first, last = spec.blocks[0], spec.blocks[-1]
        self.features = nn.Sequential(_conv_bn_relu6(3, first.in_channels, 3, 2),
                                      *[InvertedResidual(b) for b in spec.blocks],
                                      _conv_bn_relu6(last.out_channels, spec.out_channels, 1))
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        low, tap = None, int(self.spec.low_level_layer.split(".")[1])
        for i, m in enumerate(self.features):
            x = m(x)
            if i == tap:
                low = x
        return {"low_level": low, "out": x}
