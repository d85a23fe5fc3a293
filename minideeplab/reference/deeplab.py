"""PyTorch twin of ``minideeplab.scratch.deeplab``: the DeepLab family as ``nn.Module``s built from the
same ``DeepLabConfig``.

``build_model(name, backbone, output_stride, num_classes, **options)`` takes the scratch
``make_config``'s arguments and returns a ``DeepLabModule`` whose ``state_dict`` keys are the scratch
params + buffers keys: for v3, exactly torchvision's ``deeplabv3_resnet50/101`` (``backbone.*``,
``classifier.*``, ``aux_classifier.*``), whose weights therefore load with ``strict=True``.
Forward returns ``{"out": logits}``, plus ``"aux"`` for v3 with aux=True when training (torchvision
computes aux in eval too; here it is a training-only output, as in the scratch model).

v2's ``classifier`` is ``ASPPLModule``: on a ResNet the released DeepLab-v2 ResNet-101 head (per rate one
3x3 conv to the classes, summed), on VGG-16 the paper's fc6-fc7-fc8 ASPP-L (``fc_channels`` chooses).

``decoder_layout="smp"`` (v3, v3plus) builds segmentation_models_pytorch's structure (see the scratch
module); ``minideeplab.interop`` loads torchvision's and smp's models into the scratch one.

Weights move either way with ``params_to_torch`` / ``params_from_torch`` (from ``reference.backbone``;
they work for any module) or, whole models, ``to_torch(scratch_model)`` / ``to_scratch(module)``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minideeplab.reference.aspp import ASPPLModule, ASPPModule, Dropout, _init, conv_unit, set_dropout_masks
from minideeplab.reference.backbone import VGGLargeFOV, build_backbone, params_from_torch, params_to_torch
from minideeplab.scratch import deeplab as scratch
from minideeplab.scratch.backbone import VGG
from minideeplab.scratch.deeplab import AUX_DROPOUT, DeepLabConfig, make_config

__all__ = ["VGGPool5", "DeepLabModule", "build_model", "params_to_torch", "params_from_torch", "to_torch",
           "to_scratch", "set_dropout_masks"]


class VGGPool5(VGGLargeFOV):
    """VGG-16 LargeFOV's ``features`` only (up to pool5), for DeepLab v2 on VGG: ASPP-L replaces fc6/fc7."""

    def __init__(self, spec: VGG):
        super().__init__(spec)
        del self.fc6, self.fc7

    def forward(self, x):
        low = None
        for i, m in enumerate(self.features):
            x = m(x)
            if i == self.low_index:
                low = x
        return {"low_level": low, "out": x}


class _V1Head(nn.Module):
    def __init__(self, cin, classes, p):
        super().__init__()
        self.drop7 = Dropout(p)
        self.fc8 = nn.Conv2d(cin, classes, 1)

    def forward(self, x):
        return self.fc8(self.drop7(x))


class _Decoder(nn.Module):
    """v3+: low_level 1x1 projection (+ BN, ReLU), fuse: two 3x3 conv units after the concat
    (decoder_layout "paper"); or (decoder_layout "smp") aspp_conv, a 3x3 conv unit on the ASPP output before
    the upsampling, and one 3x3 conv unit after the concat."""

    def __init__(self, config: DeepLabConfig):
        super().__init__()
        a, low, d, sep = config.aspp_channels, config.low_level_channels, config.decoder_channels, config.decoder_separable
        self.aspp_conv = conv_unit(a, a, 3, 1, sep) if config.decoder_layout == "smp" else None
        self.low_level = conv_unit(config.backbone.low_level_channels, low, 1)
        n = scratch._n_fuse(config)
        self.fuse = nn.ModuleList([conv_unit(d if i else a + low, d, 3, 1, sep) for i in range(n)])


class DeepLabModule(nn.Module):
    """The DeepLab of a ``DeepLabConfig`` (see ``minideeplab.scratch.deeplab`` for the layouts)."""

    def __init__(self, config: DeepLabConfig):
        super().__init__()
        if not isinstance(config, DeepLabConfig):
            raise ValueError(f"DeepLabModule: config must be a DeepLabConfig, got {type(config).__name__}")
        self.config = config
        name, C = config.name, config.num_classes
        self.backbone = VGGPool5(config.backbone) if scratch._trunk_is_vgg_pool5(config) else build_backbone(config.backbone)
        if name == "v1":
            self.classifier = _V1Head(config.backbone.fc_channels, C, config.dropout)
        elif name == "v2":
            self.classifier = ASPPLModule(config.aspp)
        elif name == "v3":
            a = config.aspp_channels
            self.classifier = nn.Sequential(ASPPModule(config.aspp), nn.Conv2d(a, a, 3, padding=1, bias=False),
                                            nn.BatchNorm2d(a), nn.ReLU(), nn.Conv2d(a, C, 1))
            self.aux_classifier = None
            if config.aux:
                cin, width = config.aux_channels
                self.aux_classifier = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                                    nn.ReLU(), Dropout(AUX_DROPOUT), nn.Conv2d(width, C, 1))
        else:
            self.aspp = ASPPModule(config.aspp)
            self.decoder = _Decoder(config)
            self.classifier = nn.Conv2d(config.decoder_channels, C, 1)
        for m in ("classifier", "aux_classifier", "decoder"):
            if getattr(self, m, None) is not None:
                _init(getattr(self, m), m)

    def _features(self, x):
        """{"low_level", "out"} and, for the aux head, "layer3" (run stage by stage: ResNetBackbone's
        forward does not return it)."""
        b = self.backbone
        if not (self.config.name == "v3" and self.config.aux and self.training):
            return b(x)
        x = b.maxpool(F.relu(b.bn1(b.conv1(x))))
        low = b.layer1(x)
        layer3 = b.layer3(b.layer2(low))
        return {"low_level": low, "layer3": layer3, "out": b.layer4(layer3)}

    def forward(self, x):
        size, ac, name = x.shape[-2:], self.config.align_corners, self.config.name
        os_ = self.config.output_stride
        if self.config.decoder_layout == "smp" and (size[0] % os_ or size[1] % os_):
            raise ValueError(f"DeepLabModule.forward: x has shape {tuple(x.shape)}, but {self.config.describe()} with "
                             f"decoder_layout='smp' needs H and W divisible by {os_} (smp's rule)")
        f = self._features(x)
        result = OrderedDict()
        if name == "v3plus":
            a = self.aspp(f["out"])
            if self.decoder.aspp_conv is not None:
                a = self.decoder.aspp_conv(a)
            low = f["low_level"]
            h = torch.cat([F.interpolate(a, size=low.shape[-2:], mode="bilinear", align_corners=ac),
                           self.decoder.low_level(low)], dim=1)
            for unit in self.decoder.fuse:
                h = unit(h)
            s = self.classifier(h)
        else:
            s = self.classifier(f["out"])
        result["out"] = F.interpolate(s, size=size, mode="bilinear", align_corners=ac)
        if "layer3" in f:
            result["aux"] = F.interpolate(self.aux_classifier(f["layer3"]), size=size, mode="bilinear", align_corners=ac)
        return result


def build_model(name, backbone=None, output_stride=None, num_classes=21, **options) -> DeepLabModule:
    """The twin of ``scratch.deeplab.build_model`` (same arguments, less rng and dtype): a
    ``DeepLabModule`` in float32 with torch's random weights (the scratch init's scheme: class-score convs
    N(0, 0.01); the mini backbone's heads a quarter as wide unless told otherwise), in train mode (torch's
    default)."""
    return DeepLabModule(make_config(name, backbone, output_stride, num_classes, _fn="build_model", **options))


def to_torch(model: scratch.DeepLab) -> DeepLabModule:
    """A DeepLabModule holding copies of a scratch model's weights, in its dtype and mode."""
    if not isinstance(model, scratch.DeepLab):
        raise ValueError(f"to_torch: model must be a scratch DeepLab, got {type(model).__name__}")
    m = params_to_torch(DeepLabModule(model.config), model.params, {k: np.array(v) for k, v in model.buffers.items()})
    return m.train(model.training)


def to_scratch(module: DeepLabModule, rng=None) -> scratch.DeepLab:
    """A scratch DeepLab holding copies of a DeepLabModule's weights, in its dtype and mode."""
    if not isinstance(module, DeepLabModule):
        raise ValueError(f"to_scratch: module must be a DeepLabModule, got {type(module).__name__}")
    params, buffers = params_from_torch(module)
    return scratch.DeepLab(module.config, params, buffers, module.training,
                           np.random.default_rng() if rng is None else rng)
