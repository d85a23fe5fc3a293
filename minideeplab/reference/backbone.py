"""PyTorch twins of ``minideeplab.scratch.backbone``: ``nn.Module``s built from the same specs
(``reference.resnet``, ``reference.vgg``, ``reference.mobilenet``), through one registry, ``BACKBONES``.

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
from torch import nn

from minideeplab.reference.mit import MiTBackbone
from minideeplab.reference.mobilenet import MobileNetV3Backbone
from minideeplab.reference.resnet import ResNetBackbone
from minideeplab.reference.mobilenet_v2 import MobileNetV2Backbone
from minideeplab.reference.vgg import VGGLargeFOV
from minideeplab.reference.vit import ViTBackbone
from minideeplab.reference.xception import XceptionBackbone
from minideeplab.specs.backbone import VGG, ResNet
from minideeplab.specs.mobilenet import MobileNetV3
from minideeplab.specs.mobilenet_v2 import MobileNetV2
from minideeplab.specs.segformer import MiT
from minideeplab.specs.vit import ViT
from minideeplab.specs.xception import Xception

__all__ = ["ResNetBackbone", "VGGLargeFOV", "MobileNetV3Backbone", "BACKBONES", "build_backbone", "params_to_torch",
           "params_from_torch"]


# the registry: a backbone spec's type -> its twin (scratch.backbone.BACKBONES's twin)
BACKBONES = {ResNet: ResNetBackbone, VGG: VGGLargeFOV, MobileNetV3: MobileNetV3Backbone, Xception: XceptionBackbone,
             MobileNetV2: MobileNetV2Backbone, ViT: ViTBackbone,
             MiT: MiTBackbone}


def build_backbone(spec) -> nn.Module:
    """The twin of the spec's backbone (``BACKBONES``)."""
    if type(spec) not in BACKBONES:
        raise ValueError(f"build_backbone: spec must be {' or '.join('a ' + t.__name__ for t in BACKBONES)}, "
                         f"got {type(spec).__name__}")
    return BACKBONES[type(spec)](spec)


def params_to_torch(module: nn.Module, params: dict, buffers: dict) -> nn.Module:
    """Load numpy (params, buffers) into ``module`` (strict: the keys must match), converting the module
    to their dtype first. Returns the module."""
    arrays = {**params, **buffers}
    floats = {a.dtype for k, a in arrays.items() if not k.endswith("num_batches_tracked")}
    if len(floats) != 1 or next(iter(floats)) not in (np.float32, np.float64):
        raise ValueError(f"params_to_torch: params and buffers must all be float32 or all float64, "
                         f"got {sorted(map(str, floats))}")
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
