"""What a network is, apart from how it runs: plain frozen data classes (backbone plans, ASPP / ASPP-L and
head specs, the model config and its registry, conv geometry) and the argument checks they share. The
scratch code, its PyTorch twins, interop, the cost model, figures and checks all read these; this package
imports nothing else from minideeplab."""

from minideeplab.specs.aspp import ASPP, ASPPL
from minideeplab.specs.backbone import VGG, BlockPlan, ResNet, VGGLayer
from minideeplab.specs.conv import ConvGeometry, conv_output_size
from minideeplab.specs.deeplab import MODELS, DeepLabConfig, make_config
from minideeplab.specs.heads import Classifier, DeepLabHead, Decoder, FCNHead, LargeFOVHead, LRASPPHead, Step
from minideeplab.specs.mobilenet import MobileNetV3
from minideeplab.specs.mobilenet_v2 import MobileNetV2
from minideeplab.specs.xception import Xception

__all__ = ["ASPP", "ASPPL", "VGG", "BlockPlan", "ResNet", "VGGLayer", "ConvGeometry", "conv_output_size", "MODELS",
           "DeepLabConfig", "make_config", "Classifier", "DeepLabHead", "Decoder", "FCNHead", "LargeFOVHead", "Step",
           "LRASPPHead", "MobileNetV3", "Xception", "MobileNetV2"]
