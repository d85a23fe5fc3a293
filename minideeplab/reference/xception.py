"""PyTorch twin of ``minideeplab.scratch.xception``: aligned Xception with timm's module names (so a timm
``xception41/65/71`` state_dict without ``head.fc`` loads with ``strict=True``), dilated as the spec says;
forward returns {"low_level", "out"} as the scratch forward does (low_level in the entry block entered at
stride 4: its second separable conv's output, TF's tap, or the ReLU ``act3`` after it, timm's and smp's, as
the spec's ``low_level_tap`` says)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from minideeplab.specs.xception import XCEPTION_BN_EPS as BN_EPS
from minideeplab.specs.xception import Xception

__all__ = ["SeparableConv", "XceptionBlockModule", "XceptionBackbone"]

class _ConvBN(nn.Module):
    """conv (no bias) + BN, timm's ``ConvNormAct`` names: ``conv``, ``bn``."""

    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        return self.bn(self.conv(x))


class SeparableConv(nn.Module):
    """``conv_dw`` (3x3, groups = channels) -> ``bn_dw`` (-> ReLU) -> ``conv_pw`` (1x1) -> ``bn_pw`` (-> ReLU);
    the ReLUs with ``act`` only (the last block's)."""

    def __init__(self, cin, cout, stride, dilation, act):
        super().__init__()
        self.act = act
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=dilation, dilation=dilation, groups=cin,
                                 bias=False)
        self.bn_dw = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        h = self.bn_dw(self.conv_dw(x))
        h = F.relu(h) if self.act else h
        y = self.bn_pw(self.conv_pw(h))
        return F.relu(y) if self.act else y


class _Stack(nn.Module):
    def __init__(self, plan):
        super().__init__()
        cin = plan.in_channels
        for k, cout in enumerate(plan.out_channels):
            self.add_module(f"conv{k + 1}", SeparableConv(cin, cout, plan.stride if k == 2 else 1, plan.dilation,
                                                          not plan.start_with_relu))
            cin = cout


class XceptionBlockModule(nn.Module):
    """One block: ``shortcut`` (1x1 conv + BN, where the spec says "conv"), ``stack.conv1..3``; forward
    returns (y, pre, post): conv2's output and the ReLU before conv3 (None for the last block, which has none)."""

    def __init__(self, plan):
        super().__init__()
        self.plan = plan
        self.shortcut = _ConvBN(plan.in_channels, plan.out_channels[2], 1, plan.stride) if plan.skip == "conv" else None
        self.stack = _Stack(plan)

    def forward(self, x):
        swr, h, pre, post = self.plan.start_with_relu, x, None, None
        for k in range(3):
            if swr:
                pre, h = h, F.relu(h)
                post = h
            h = getattr(self.stack, f"conv{k + 1}")(h)
        skip = self.plan.skip
        return (h + (self.shortcut(x) if skip == "conv" else x) if skip != "none" else h), pre, post


class XceptionBackbone(nn.Module):
    """timm's XceptionAligned without ``head``, dilated as ``spec`` says (``stem.{0,1}``, ``blocks.{i}``)."""

    def __init__(self, spec: Xception):
        super().__init__()
        if not isinstance(spec, Xception):
            raise ValueError(f"XceptionBackbone: spec must be an Xception, got {type(spec).__name__}")
        self.spec = spec
        w = spec.widths
        self.stem = nn.Sequential(_ConvBN(3, w[0], 3, 2), _ConvBN(w[0], w[1], 3, 1))
        self.blocks = nn.Sequential(*[XceptionBlockModule(b) for b in spec.blocks])
        for m in self.modules():  # torchvision's init, as the scratch one
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        for m in self.stem:
            x = F.relu(m(x))
        low = None
        for i, block in enumerate(self.blocks):
            x, pre, post = block(x)
            if i == self.spec.low_level_block:
                low = post if self.spec.low_level_tap == "smp" else pre
        return {"low_level": low, "out": x}
