"""PyTorch reference implementations, module by module the twins of ``minideeplab.scratch``.

``build_model`` and ``DeepLab`` (= ``deeplab.DeepLabModule``) are the twins of ``scratch.build_model`` and
``scratch.DeepLab``."""

from minideeplab.reference import (aspp, atrous, backbone, crf, deeplab, heads, layers, mobilenet, mobilenet_v2,
                                   receptive, resnet, vgg, xception)
from minideeplab.reference.deeplab import DeepLabModule, build_model

DeepLab = DeepLabModule

__all__ = ["build_model", "DeepLab", "DeepLabModule",
           "aspp", "atrous", "backbone", "crf", "deeplab", "heads", "layers", "mobilenet", "receptive", "resnet", "vgg",
           "xception", "mobilenet_v2"]
