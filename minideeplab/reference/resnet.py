"""PyTorch twin of ``minideeplab.scratch.resnet``: torchvision's ResNet without avgpool and fc, dilated as the
spec says; forward returns {"low_level", "layer3", "out"} as the scratch forward does."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from minideeplab.specs.backbone import ResNet

__all__ = ["ResNetBackbone"]


def _conv(cin, cout, k, stride, dilation, bias=False):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k - 1) // 2, dilation=dilation, bias=bias)


class _Block(nn.Module):
    """A basic block (conv1, conv2 3x3) or a bottleneck (conv1 1x1, conv2 3x3, conv3 1x1), each conv
    followed by BN, ReLU between, ReLU after the sum with the shortcut (``downsample``: 1x1 conv + BN)."""

    def __init__(self, spec: ResNet, prefix: str, plan):
        super().__init__()
        table = spec.conv_table()
        if spec.block == "bottleneck":
            chans = [(plan.in_channels, plan.width, 1), (plan.width, plan.width, 3), (plan.width, plan.out_channels, 1)]
        else:
            chans = [(plan.in_channels, plan.width, 3), (plan.width, plan.width, 3)]
        self.n = len(chans)
        for k, (cin, cout, ks) in enumerate(chans, start=1):
            setattr(self, f"conv{k}", _conv(cin, cout, ks, *table[f"{prefix}.conv{k}"]))
            setattr(self, f"bn{k}", nn.BatchNorm2d(cout))
        self.downsample = None
        if plan.downsample:
            self.downsample = nn.Sequential(
                _conv(plan.in_channels, plan.out_channels, 1, *table[f"{prefix}.downsample.0"]),
                nn.BatchNorm2d(plan.out_channels))

    def forward(self, x):
        h = x
        for k in range(1, self.n + 1):
            h = getattr(self, f"bn{k}")(getattr(self, f"conv{k}")(h))
            if k < self.n:
                h = F.relu(h)
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNetBackbone(nn.Module):
    """torchvision's ResNet without avgpool and fc, dilated as ``spec`` says."""

    def __init__(self, spec: ResNet):
        super().__init__()
        if not isinstance(spec, ResNet):
            raise ValueError(f"ResNetBackbone: spec must be a ResNet, got {type(spec).__name__}")
        self.spec = spec
        self.conv1 = _conv(3, spec.stem_width, 7, 2, 1)
        self.bn1 = nn.BatchNorm2d(spec.stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, stage in enumerate(spec.stages, start=1):
            setattr(self, f"layer{i}", nn.Sequential(*[_Block(spec, f"layer{i}.{j}", b) for j, b in enumerate(stage)]))
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        layer3 = self.layer3(self.layer2(low))
        return {"low_level": low, "layer3": layer3, "out": self.layer4(layer3)}

