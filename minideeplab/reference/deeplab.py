"""PyTorch twin of ``minideeplab.scratch.deeplab``: the DeepLab family as ``nn.Module``s built from the
same ``DeepLabConfig``.

``build_model(name, backbone, output_stride, num_classes, **options)`` takes the scratch
``make_config``'s arguments and returns a ``DeepLabModule`` whose ``state_dict`` keys are the scratch
params + buffers keys: for v3, exactly torchvision's ``deeplabv3_resnet50/101`` and
``deeplabv3_mobilenet_v3_large`` (``backbone.*``, ``classifier.*``, ``aux_classifier.*``), for lraspp its
``lraspp_mobilenet_v3_large``, whose weights therefore load with ``strict=True``.
Forward returns ``{"out": logits}``, plus ``"aux"`` for v3 with aux=True when training (torchvision
computes aux in eval too; here it is a training-only output, as in the scratch model).

``DeepLabModule`` is generic, as the scratch model: ``backbone`` (``build_backbone(config.trunk)``), then one
module per step of ``config.steps``, registered under the step's name and built by ``heads.HEADS`` from
the step's spec; forward runs them in order over the features and resizes the "scores" to the input.
v2's ``classifier`` is ``ASPPLModule``: on a ResNet the released DeepLab-v2 ResNet-101 head (per rate one
3x3 conv to the classes, summed), on VGG-16 the paper's fc6-fc7-fc8 ASPP-L (``fc_channels`` chooses).

``decoder_layout="smp"`` (v3, v3plus) builds segmentation_models_pytorch's structure (see the scratch
module); ``minideeplab.interop`` loads torchvision's and smp's models into the scratch one.

Weights move either way with ``params_to_torch`` / ``params_from_torch`` (from ``reference.backbone``;
they work for any module) or, whole models, ``to_torch(scratch_model)`` / ``to_scratch(module)``.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from minideeplab.reference.aspp import Dropout, init_module, set_dropout_masks
from minideeplab.reference.backbone import build_backbone, params_from_torch, params_to_torch
from minideeplab.reference.heads import HEADS
from minideeplab.scratch import deeplab as scratch
from minideeplab.specs.deeplab import DeepLabConfig, is_score_layer, make_config

__all__ = ["DeepLabModule", "build_model", "Dropout", "params_to_torch", "params_from_torch", "to_torch", "to_scratch",
           "set_dropout_masks"]


class DeepLabModule(nn.Module):
    """The DeepLab of a ``DeepLabConfig``: ``backbone``, then the modules of ``config.steps`` (see
    ``minideeplab.specs.deeplab`` for the layouts). forward(x) -> {"out": logits} (+ "aux" when training v3
    with aux=True)."""

    def __init__(self, config: DeepLabConfig):
        super().__init__()
        if not isinstance(config, DeepLabConfig):
            raise ValueError(f"DeepLabModule: config must be a DeepLabConfig, got {type(config).__name__}")
        self.config = config
        self.backbone = build_backbone(config.trunk)
        for step in config.steps:
            self.add_module(step.name, HEADS[type(step.spec)](step.spec))
        # the scratch init's scheme (class-score convs N(0, 0.01)) by the model's names: the modules with class
        # scores first, then those that hold none, except one that initialised itself (an ASPP). Either order
        # gives the same distributions; this one is the order the twin drew in before the model was generic,
        # so that a seeded run (the shipped model's, the ablations') still starts from the same weights.
        def scores(m, name):
            return any(is_score_layer(n) for n, _ in m.named_modules(prefix=name))

        modules = [(step.name, getattr(self, step.name)) for step in config.steps]
        for name, m in sorted(modules, key=lambda nm: not scores(nm[1], nm[0])):
            if scores(m, name) or not getattr(m, "initialised", False):
                init_module(m, name)

    def forward(self, x):
        size, ac = x.shape[-2:], self.config.align_corners
        os_ = self.config.output_stride
        if self.config.decoder_layout == "smp" and (size[0] % os_ or size[1] % os_):
            raise ValueError(f"DeepLabModule.forward: x has shape {tuple(x.shape)}, but {self.config.describe()} with "
                             f"decoder_layout='smp' needs H and W divisible by {os_} (smp's rule)")
        feats = dict(self.backbone(x))
        feats["input"] = x  # what a step may read besides the features (the CRF head: the image's colours)
        for step in self.config.steps:
            if step.training_only and not self.training:
                continue
            feats[step.output] = getattr(self, step.name)(*(feats[i] for i in step.inputs))
        scores = feats["scores"]  # at the input's size already after the CRF head
        result = {"out": scores if scores.shape[-2:] == size else F.interpolate(scores, size=size, mode="bilinear",
                                                                                  align_corners=ac)}
        if "aux" in feats:
            result["aux"] = F.interpolate(feats["aux"], size=size, mode="bilinear", align_corners=ac)
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
