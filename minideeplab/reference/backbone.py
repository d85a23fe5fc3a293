"""PyTorch twins of ``minideeplab.scratch.backbone``: ``nn.Module``s built from the same specs.

Their ``state_dict`` keys are the scratch ``params`` and ``buffers`` keys (torchvision's names), so
``params_to_torch`` / ``params_from_torch`` move weights either way, and a torchvision ResNet's
``state_dict`` (without ``fc``) loads with ``strict=True``. Every conv's stride and dilation come from
the spec (``ResNet.conv_table()``, ``VGG.layers``); padding is dilation * (k - 1) / 2. Forward returns
{"low_level", "out"} (ResNet: and "layer3", the aux head's input), as the scratch forward; autograd gives
every backward.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minideeplab.specs.backbone import VGG, ResNet

__all__ = ["ResNetBackbone", "VGGLargeFOV", "MODULES", "build_backbone", "params_to_torch", "params_from_torch"]


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


# the registry: a backbone spec's type -> its twin (scratch.backbone.BACKBONES's twin)
MODULES = {ResNet: ResNetBackbone, VGG: VGGLargeFOV}


def build_backbone(spec) -> nn.Module:
    """The twin of the spec's backbone (``MODULES``)."""
    if type(spec) not in MODULES:
        raise ValueError(f"build_backbone: spec must be {' or '.join('a ' + t.__name__ for t in MODULES)}, "
                         f"got {type(spec).__name__}")
    return MODULES[type(spec)](spec)


def params_to_torch(module: nn.Module, params: dict, buffers: dict) -> nn.Module:
    """Load numpy (params, buffers) into ``module`` (strict: the keys must match), converting the module
    to their dtype first. Returns the module."""
    arrays = {**params, **buffers}
    floats = {a.dtype for k, a in arrays.items() if not k.endswith("num_batches_tracked")}
    if len(floats) != 1 or next(iter(floats)) not in (np.float32, np.float64):
        raise ValueError(f"params_to_torch: params and buffers must all be float32 or all float64, got {sorted(map(str, floats))}")
    module.to(torch.float64 if next(iter(floats)) == np.float64 else torch.float32)
    module.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in arrays.items()}, strict=True)
    return module


def params_from_torch(module: nn.Module) -> tuple[dict, dict]:
    """(params, buffers): numpy copies of the module's parameters and buffers, keyed by state_dict name."""
    names = {n for n, _ in module.named_parameters()}
    state = module.state_dict()
    params = {k: v.detach().cpu().numpy().copy() for k, v in state.items() if k in names}
    buffers = {k: v.detach().cpu().numpy().copy() for k, v in state.items() if k not in names}
    return params, buffers
