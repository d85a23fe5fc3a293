"""PyTorch twins of ``minideeplab.scratch.heads``: one ``nn.Module`` per head spec, whose ``state_dict`` keys
below the step's name are the scratch unit's parameter names, and whose forward takes the step's inputs
(``module(*xs)``). ``HEADS`` is the registry, the twin of ``scratch.heads.HEADS``: spec type -> a callable
that builds the module from the spec."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minideeplab.reference import crf as _crf
from minideeplab.reference.aspp import ASPPLModule, ASPPModule, Dropout, conv_unit
from minideeplab.specs.aspp import ASPP, ASPPL
from minideeplab.specs.heads import (Classifier, CRFHead, DeepLabHead, Decoder, FCNHead, LargeFOVHead, LRASPPHead,
                                     SegFormerHead)

__all__ = ["LargeFOVHeadModule", "DeepLabHeadModule", "FCNHeadModule", "DecoderModule", "classifier_module",
           "LRASPPHeadModule", "SegFormerHeadModule", "CRFHeadModule", "HEADS"]


class LargeFOVHeadModule(nn.Module):
    """v1: ``drop7`` (Dropout) -> ``fc8`` (1x1 with bias to the classes)."""

    def __init__(self, spec: LargeFOVHead):
        super().__init__()
        self.drop7 = Dropout(spec.dropout)
        self.fc8 = nn.Conv2d(spec.in_channels, spec.num_classes, 1)

    def forward(self, x):
        return self.fc8(self.drop7(x))


class DeepLabHeadModule(nn.Sequential):
    """v3, torchvision's ``DeepLabHead``: ASPP (.0), 3x3 conv (.1), BN (.2), ReLU (.3), 1x1 to the classes (.4)."""

    def __init__(self, spec: DeepLabHead):
        a = spec.aspp.out_channels
        super().__init__(ASPPModule(spec.aspp), nn.Conv2d(a, a, 3, padding=1, bias=False), nn.BatchNorm2d(a),
                         nn.ReLU(), nn.Conv2d(a, spec.num_classes, 1))


class FCNHeadModule(nn.Sequential):
    """v3's aux head, torchvision's ``FCNHead``: 3x3 conv (.0), BN (.1), ReLU (.2), Dropout (.3), 1x1 (.4)."""

    def __init__(self, spec: FCNHead):
        c = spec.channels
        super().__init__(nn.Conv2d(spec.in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                         Dropout(spec.dropout), nn.Conv2d(c, spec.num_classes, 1))


class DecoderModule(nn.Module):
    """v3+: ``low_level`` 1x1 projection (+ BN, ReLU), ``fuse``: 3x3 conv units after the concat (layout
    "paper": two); or (layout "smp") ``aspp_conv``, a 3x3 unit on the ASPP output before the upsampling, and
    one fuse unit. forward(aspp, low_level) -> (N, channels, H/4, W/4)."""

    def __init__(self, spec: Decoder):
        super().__init__()
        self.spec = spec
        a, low, d, sep = spec.aspp_channels, spec.low_level_channels, spec.channels, spec.separable
        self.aspp_conv = conv_unit(a, a, 3, 1, sep) if spec.aspp_conv else None
        self.low_level = conv_unit(spec.low_level_in, low, 1)
        self.fuse = nn.ModuleList([conv_unit(d if i else a + low, d, 3, 1, sep) for i in range(spec.n_fuse)])

    def forward(self, a, low):
        if self.aspp_conv is not None:
            a = self.aspp_conv(a)
        up = F.interpolate(a, size=low.shape[-2:], mode="bilinear", align_corners=self.spec.align_corners)
        h = torch.cat([up, self.low_level(low)], dim=1)
        for unit in self.fuse:
            h = unit(h)
        return h


def classifier_module(spec: Classifier) -> nn.Conv2d:
    """A 1x1 conv with bias to the classes."""
    return nn.Conv2d(spec.in_channels, spec.num_classes, 1)


class LRASPPHeadModule(nn.Module):
    """LR-ASPP, torchvision's ``LRASPPHead``: ``cbr`` (1x1 conv, BN, ReLU), ``scale`` (global pool, 1x1 conv,
    sigmoid), ``low_classifier``, ``high_classifier``. forward(low, high) -> (N, classes, *low's size)."""

    def __init__(self, spec: LRASPPHead):
        super().__init__()
        self.spec = spec
        self.cbr = conv_unit(spec.high_channels, spec.inter_channels, 1)
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(spec.high_channels, spec.inter_channels, 1,
                                                                      bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(spec.low_channels, spec.num_classes, 1)
        self.high_classifier = nn.Conv2d(spec.inter_channels, spec.num_classes, 1)

    def forward(self, low, high):
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=self.spec.align_corners)
        return self.low_classifier(low) + self.high_classifier(x)


class CRFHeadModule(_crf.CRFLayer):
    """The dense CRF as the model's last layer: ``reference.crf.CRFLayer`` (``log_pos_w``, ``log_bi_w``,
    ``compat``) on the scores resized to the input and the input's RGB colours, recovered from the normalised
    x as round(255 (x * std + mean)). forward(scores, x) -> log Q (N, classes, H, W).
    method "lattice" or "window": the scratch mean field inside ``MeanField`` (torch has no lattice: a model
    comparison is then scratch against scratch for the CRF); "exact": ``reference.crf.mean_field``, torch's own
    arithmetic differentiated by autograd, the independent twin."""

    def __init__(self, spec: CRFHead):
        super().__init__(spec.num_classes, spec.n_iters, spec.pos_w, spec.bi_w, spec.pos_xy_std, spec.bi_xy_std,
                         spec.bi_rgb_std, spec.method, spec.normalization, spec.window)
        self.spec = spec
        self.initialised = True  # its own values (log weights, Potts): DeepLabModule's init leaves it alone

    def forward(self, scores, x):
        spec = self.spec
        if scores.shape[-2:] != x.shape[-2:]:
            scores = F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=spec.align_corners)
        mean = torch.tensor(spec.mean, dtype=torch.float64, device=x.device).view(3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float64, device=x.device).view(3, 1, 1)
        rgb = torch.round(255 * (x.detach().to(torch.float64) * std + mean)).clamp(0, 255).to(torch.uint8)
        images = rgb.permute(0, 2, 3, 1).cpu().numpy()
        if spec.method != "exact":
            return super().forward(scores, images)
        kw = {k: v for k, v in self.kw.items() if k not in ("method", "window")}
        q = _crf.mean_field(scores, images, pos_w=self.log_pos_w.exp(), bi_w=self.log_bi_w.exp(), compat=self.compat,
                            **kw).to(scores.dtype)
        return torch.log(q.clamp_min(torch.finfo(scores.dtype).tiny))


class _StageLinear(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.linear = nn.Linear(cin, cout)

    def forward(self, m):
        B, C, h, w = m.shape
        return self.linear(m.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, -1, h, w)


class SegFormerHeadModule(nn.Module):
    """SegFormer's all-MLP decoder (smp's names): ``mlp_stage.{j}.linear`` (j = 0: the last stage), ``fuse_stage``
    (1x1 conv, BN, ReLU). forward(*stages, stride 4 first) -> (N, channels, H/4, W/4)."""

    def __init__(self, spec: SegFormerHead):
        super().__init__()
        self.mlp_stage = nn.ModuleList(_StageLinear(c, spec.channels) for c in reversed(spec.in_channels))
        self.fuse_stage = conv_unit(4 * spec.channels, spec.channels, 1)
        for m in self.mlp_stage.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, *stages):
        size = stages[0].shape[-2:]
        ups = [F.interpolate(lin(m), size=size, mode="bilinear", align_corners=False)
               for lin, m in zip(self.mlp_stage, reversed(stages))]
        return self.fuse_stage(torch.cat(ups, dim=1))


# the registry: a head spec's type -> its twin's builder (scratch.heads.UNITS's twin)
HEADS = {ASPP: ASPPModule, ASPPL: ASPPLModule, LargeFOVHead: LargeFOVHeadModule, DeepLabHead: DeepLabHeadModule,
           FCNHead: FCNHeadModule, Decoder: DecoderModule, Classifier: classifier_module, LRASPPHead: LRASPPHeadModule,
           SegFormerHead: SegFormerHeadModule, CRFHead: CRFHeadModule}
