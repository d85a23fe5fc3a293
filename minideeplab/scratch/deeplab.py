"""The DeepLab family from scratch, forward and backward: v1 (LargeFOV), v2 (ASPP-L), v3 (ASPP) and
v3+ (ASPP + decoder), as configurations of one model, in NumPy on top of ``backbone`` and ``aspp``.

    v1      VGG-16 LargeFOV (fc6 3x3 at rate 12, fc7 1x1) -> drop7 -> fc8 (1x1 to the classes) -> bilinear x8
    v2      ResNet-101 at output stride 8 -> ASPP-L: per rate (6, 12, 18, 24) one 3x3 conv to the classes,
            summed (the released DeepLab-v2 ResNet-101) -> bilinear x8; or VGG-16 up to pool5 -> ASPP-L with
            fc6-fc7-fc8 per rate (the paper's VGG-16 ASPP-L), summed -> bilinear x8
    v3      ResNet -> ASPP -> 3x3 conv, BN, ReLU -> 1x1 to the classes -> bilinear to the input (torchvision's
            ``deeplabv3_resnet50``), optionally an auxiliary FCN head on layer3 for training
    v3plus  ResNet -> ASPP -> resize to the stride-4 ``low_level`` features, concat with their 1x1 projection
            to 48 channels -> two 3x3 convs -> 1x1 to the classes -> bilinear to the input

``DeepLabConfig`` (frozen) names a model with the papers' words (``output_stride``, ``atrous_rates``,
``image_pooling``, ``multi_grid`` in the backbone spec, ``low_level``...). ``build_model(name, ...)``
makes one with fresh weights; ``DeepLab`` holds config, params and buffers and runs
``forward(x) -> (logits, cache)`` / ``backward(dlogits, cache) -> grads``. In eval mode ``model(x)`` runs
``model_infer``: the same logits as ``forward`` (up to float rounding) without building the backward's
caches, each conv's batch norm, ReLU and residual sum done in one in-place pass after it.

Parameter names (flat dicts, as ``backbone``; the reference twin's ``state_dict`` keys):

    backbone.*                  the backbone's torchvision names (``backbone.layer4.2.conv3.weight``,
                                ``backbone.features.0.weight``, ``backbone.fc6.weight``)
    v1  classifier.fc8.*        (dropout ``classifier.drop7``)
    v2  classifier.branches.{i}.weight/.bias           ResNet form: 3x3 conv at rate i (Caffe's fc1_voc12_c{i})
        classifier.branches.{i}.fc6/fc7/fc8.*          VGG form (see ``aspp.ASPPL``)
    v3  classifier.0.*          the ASPP, torchvision's names (``aspp.ASPP``)
        classifier.1.weight     3x3 conv 256 -> 256, no bias
        classifier.2.*          BN
        classifier.4.*          1x1 conv 256 -> classes, with bias
        aux_classifier.0.weight 3x3 conv layer3 -> layer3 / 4 (1024 -> 256), no bias   (aux=True only)
        aux_classifier.1.*      BN;   .3 dropout 0.1;   aux_classifier.4.* 1x1 to the classes, with bias
      = ``torchvision.models.segmentation.deeplabv3_resnet50(num_classes=21, aux_loss=...)``'s state_dict
    v3plus aspp.*               the ASPP, same names as v3's classifier.0 (smp: decoder.aspp.0.*)
        decoder.low_level.0.weight, decoder.low_level.1.*   1x1 projection of low_level to 48 + BN
        decoder.fuse.{0,1}.0.weight, decoder.fuse.{0,1}.1.* the two 3x3 convs + BN
                                (separable: .0.0 depthwise, .0.1 pointwise, as smp's SeparableConv2d)
        classifier.weight, classifier.bias                   1x1 to the classes
      These v3+ names are ours; ``minideeplab.interop`` maps smp's onto them.
    v3plus, decoder_layout="smp" (segmentation_models_pytorch's ``DeepLabV3Plus``, whose structure differs):
        aspp.*                                  the ASPP (smp: decoder.aspp.0.*)
        decoder.aspp_conv.0.weight, .1.*        a 3x3 conv + BN + ReLU on the ASPP output, BEFORE the
                                                upsampling (separable: .0.0/.0.1; smp: decoder.aspp.1, .2)
        decoder.low_level.*                     as above (smp: decoder.block1)
        decoder.fuse.0.*                        ONE 3x3 conv + BN + ReLU after the concat (smp: decoder.block2)
        classifier.weight, classifier.bias      (smp: segmentation_head.0)
    v3, decoder_layout="smp" (smp's ``DeepLabV3``): torchvision's structure and names (smp: decoder.aspp,
        decoder.conv, decoder.bn, segmentation_head.0); only the input rule differs (below).
    decoder_layout="smp" also takes smp's input rule: H and W must be multiples of the output stride (its
    upsamplings are scale factors, and it refuses other sizes).

Bilinear resizing: ``align_corners`` (config) applies to the final resize of every model and to the v3+
decoder's upsampling of the ASPP output; default False (torchvision). The ASPP's image pooling branch
resizes a 1x1 map, the same either way. With align_corners=True, v3+ needs H and W of the form
k * output_stride (smp, whose x4 upsampling is a scale factor) or k * output_stride + 1 (TF DeepLab's
513: then every feature map's corner pixels sit exactly on the input's corners); other sizes are refused.
align_corners=False accepts any size (there feature i of a stride-s map, centred on input pixel i*s, is
resized as if it were centred on (i + 1/2) s - 1/2: a shift of (s - 1)/2 pixels, torchvision's choice).

Head widths: the papers' (ASPP 256, decoder 256, low_level projection 48) by default; ``make_config`` /
``build_model`` give the "mini" backbone, whose widths are ResNet-50's / 4, heads a quarter as wide (ASPP
64, decoder 64, low_level 12) unless the caller sets them. (v3's aux head is layer3's channels / 4 either
way; v2's ResNet-form head has no width of its own.)

Init (``init_model``, ``build_model``): torchvision's (Kaiming normal, fan-out) everywhere except the
class-score convs (``is_score_layer``), which get DeepLab's N(0, 0.01) weights and zero bias: a fresh
model's logits are then small and its loss starts near ln(num_classes).

Not here (noted for later): the paper's drop6 inside VGG-16 LargeFOV (the backbone has no dropout), the
dense CRF (``crf``), multi-scale inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from minideeplab.scratch._validate import FLOAT_DTYPES, _is_int
from minideeplab.scratch.aspp import (ASPP, ASPPL, _names, aspp_backward, aspp_forward, aspp_infer,
                                      aspp_l_backward, aspp_l_forward, aspp_l_infer, check_subset, conv1x1_backward,
                                      conv1x1_forward, conv1x1_infer, conv_unit_backward, conv_unit_forward,
                                      conv_unit_infer, conv_unit_shapes, init_params, maybe_dropout)
from minideeplab.scratch.aspp import parameter_shapes as aspp_parameter_shapes
from minideeplab.scratch.backbone import (VGG, BackboneCache, ResNet, StemCache, backbone_backward, backbone_forward,
                                          backbone_infer, basic_block_backward, bottleneck_backward, check_image,
                                          conv_relu_backward, conv_relu_forward, conv_relu_infer, stem_backward)
from minideeplab.scratch.backbone import parameter_shapes as backbone_parameter_shapes
from minideeplab.scratch.layers import (MaxPoolCache, _float_array, concat, concat_backward, dropout_backward,
                                        max_pool2d, max_pool2d_backward, max_pool2d_infer, resize_bilinear,
                                        resize_bilinear_backward, resize_bilinear_infer)

__all__ = ["MODELS", "BACKBONES", "DeepLabConfig", "make_config", "model_parameter_shapes", "is_score_layer",
           "init_model", "DeepLabCache", "model_forward", "model_backward", "model_infer", "DeepLab", "build_model",
           "sgd_step"]

from minideeplab.scratch.optim import sgd_step  # noqa: E402 (re-exported: notebook 06 calls deeplab.sgd_step)


MODELS = ("v1", "v2", "v3", "v3plus")
BACKBONES = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mini")
DEFAULT_BACKBONE = {"v1": "vgg16", "v2": "resnet101", "v3": "resnet50", "v3plus": "resnet50"}
DEFAULT_OUTPUT_STRIDE = {"v1": 8, "v2": 8, "v3": 16, "v3plus": 16}
DECODER_LAYOUTS = ("paper", "smp")
V2_RATES = (6, 12, 18, 24)                                  # ASPP-L
V3_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}  # tied to the output stride (v3 paper)
AUX_DROPOUT = 0.1                                           # torchvision's FCNHead
MINI_HEAD = {"aspp_channels": 64, "low_level_channels": 12, "decoder_channels": 64}  # the paper's / 4, as the mini
SCORE_STD = 0.01                                            # DeepLab's init of the class-score convs

# fields that mean something only for some models: a non-default value elsewhere is an error
_APPLIES = {
    "image_pooling": ("v3", "v3plus"), "aspp_separable": ("v3", "v3plus"), "aspp_channels": ("v3", "v3plus"),
    "fc_channels": ("v2",), "aux": ("v3",),
    "low_level_channels": ("v3plus",), "decoder_channels": ("v3plus",), "decoder_separable": ("v3plus",),
    "decoder_layout": ("v3", "v3plus"),
}


def _cfg_error(msg):
    return ValueError(f"DeepLabConfig: {msg}")


def _backbone_name(spec) -> str:
    if isinstance(spec, VGG):
        return "vgg16" if spec == VGG() else "vgg (narrow)"
    return "mini" if spec.depth == "mini" else f"resnet{spec.depth}"


@dataclass(frozen=True)
class DeepLabConfig:
    """One member of the family. Built by ``make_config`` / ``build_model``, or directly.

    name: "v1", "v2", "v3" or "v3plus".
    backbone: a ``ResNet`` or ``VGG`` spec (it carries ``output_stride``, ``multi_grid`` and the dilation
      convention). v1: VGG. v2: ResNet or VGG (used up to pool5: ASPP-L's fc6 replaces LargeFOV's).
      v3, v3plus: ResNet.
    num_classes: of the logits (21 for PASCAL VOC).
    atrous_rates: v3/v3plus: the ASPP's 3x3 branches, None -> tied to the output stride: (6, 12, 18) at
      16, (12, 24, 36) at 8, (3, 6, 9) at 32. v2: ASPP-L's branches, None -> (6, 12, 18, 24). v1: the
      VGG's fc6 rate, (backbone.fc6_rate,) (set it in the VGG spec).
    image_pooling: the ASPP's image-level branch (v3, v3plus).
    aspp_separable: depthwise-separable 3x3 ASPP branches (v3, v3plus; smp's v3+ default).
    aspp_channels: of the ASPP branches and its projection, 256 (v3, v3plus). The widths here are the
      papers'; ``make_config`` defaults the mini backbone's to a quarter of them (``MINI_HEAD``).
    dropout: v3/v3plus: after the ASPP projection (0.5 torchvision and smp, 0.1 TF DeepLab). v2: drop6 and
      drop7 in every ASPP-L branch with fc layers (0.5); the ResNet form has no dropout (leave it at 0.5,
      unused, or set 0). v1: drop7 before fc8 (0.5). Only when training.
    fc_channels: v2's ASPP-L form (see ``aspp.ASPPL``). "auto" (default): by the backbone, as released:
      None for a ResNet (one 3x3 conv per rate to the classes: DeepLab-v2 ResNet-101, Caffe's
      fc1_voc12_c0..c3), 1024 for VGG (fc6-fc7-fc8 per rate, fc6/fc7 that wide: DeepLab-v2 VGG-16).
      None or an int asks for that form on either backbone. Resolved on construction.
    aux: torchvision's auxiliary FCN head on layer3 (v3): 3x3 conv to layer3's channels / 4, BN, ReLU,
      dropout 0.1, 1x1 to the classes, resized to the input. Computed only when training.
    low_level_channels: the v3+ decoder's projection of the stride-4 features, 48 (mini: 12).
    decoder_channels: of the v3+ decoder's two 3x3 convs, 256 (mini: 64).
    decoder_separable: depthwise-separable 3x3 convs in the v3+ decoder (with decoder_layout="smp": its
      conv on the ASPP output and its one conv after the concat, as smp's SeparableConv2d).
    decoder_layout: "paper" (default): v3 as torchvision, v3+ as the paper (concat, then two 3x3 convs).
      "smp": segmentation_models_pytorch's. v3+: a 3x3 conv + BN + ReLU on the ASPP output before the
      upsampling, then the concat and ONE 3x3 conv (see the module's docstring for the names); v3: the
      same structure as "paper". Either way H and W must be multiples of the output stride (smp's rule).
    align_corners: of the bilinear resizes (see the module's docstring); False (torchvision) by default,
      True as smp and TF DeepLab.

    Derived: ``output_stride``, ``multi_grid``, ``aspp`` (the ASPP / ASPPL spec, None for v1).
    """

    name: str
    backbone: ResNet | VGG
    num_classes: int = 21
    atrous_rates: tuple[int, ...] | None = None
    image_pooling: bool = True
    aspp_separable: bool = False
    aspp_channels: int = 256
    dropout: float = 0.5
    fc_channels: int | None | str = "auto"
    aux: bool = False
    low_level_channels: int = 48
    decoder_channels: int = 256
    decoder_separable: bool = False
    align_corners: bool = False
    decoder_layout: str = "paper"

    def __post_init__(self):
        set_ = object.__setattr__
        name, spec = self.name, self.backbone
        if name not in MODELS:
            raise _cfg_error(f"name must be one of {', '.join(map(repr, MODELS))}, got {name!r}")
        if not isinstance(spec, (ResNet, VGG)):
            raise _cfg_error(f"backbone must be a ResNet or VGG spec, got {type(spec).__name__}")
        if name == "v1" and not isinstance(spec, VGG):
            raise _cfg_error(f"v1 (DeepLab-LargeFOV) needs a VGG backbone, got {spec!r}")
        if name in ("v3", "v3plus") and not isinstance(spec, ResNet):
            raise _cfg_error(f"{name} needs a ResNet backbone, got {spec!r}")
        for f in ("num_classes", "aspp_channels", "low_level_channels", "decoder_channels"):
            v = getattr(self, f)
            if not _is_int(v) or v < 1:
                raise _cfg_error(f"{f} must be an int >= 1, got {v!r}")
            set_(self, f, int(v))
        for f in ("image_pooling", "aspp_separable", "aux", "decoder_separable", "align_corners"):
            v = getattr(self, f)
            if not isinstance(v, (bool, np.bool_)):
                raise _cfg_error(f"{f} must be True or False, got {v!r}")
            set_(self, f, bool(v))
        if self.decoder_layout not in DECODER_LAYOUTS:
            raise _cfg_error(f"decoder_layout must be one of {', '.join(map(repr, DECODER_LAYOUTS))}, "
                             f"got {self.decoder_layout!r}")
        p = self.dropout
        if (not isinstance(p, (int, float, np.integer, np.floating)) or isinstance(p, (bool, np.bool_))
                or not 0 <= p < 1):
            raise _cfg_error(f"dropout must be a number in [0, 1), got {p!r}")
        set_(self, "dropout", float(p))
        defaults = {f.name: f.default for f in fields(self)}
        for f, models in _APPLIES.items():
            if getattr(self, f) != defaults[f] and name not in models:
                raise _cfg_error(f"{f}={getattr(self, f)!r} applies to {' and '.join(models)} only, not {name}")
        fc = self.fc_channels
        if isinstance(fc, str):
            if fc != "auto":
                raise _cfg_error(f"fc_channels must be 'auto', None or an int >= 1, got {fc!r}")
            if name == "v2":
                fc = 1024 if isinstance(spec, VGG) else None
        elif fc is not None:
            if not _is_int(fc) or fc < 1:
                raise _cfg_error(f"fc_channels must be 'auto', None (v2's ResNet form: one 3x3 conv per rate) or an "
                                 f"int >= 1 (fc6-fc7-fc8 that wide, the VGG form), got {fc!r}")
            fc = int(fc)
        set_(self, "fc_channels", fc)
        if name == "v2" and fc is None and self.dropout not in (0.0, defaults["dropout"]):
            raise _cfg_error(f"dropout={self.dropout!r} applies to v2's fc6-fc7-fc8 head (fc_channels an int) "
                             f"only: with fc_channels=None (the ResNet-101 form) each branch is one 3x3 conv, "
                             f"with no dropout")

        rates = self.atrous_rates
        if rates is not None:
            if (not isinstance(rates, (tuple, list)) or len(rates) == 0
                    or not all(_is_int(r) and r >= 1 for r in rates)):
                raise _cfg_error(f"atrous_rates must be None or a non-empty tuple of ints >= 1, got {rates!r}")
            rates = tuple(int(r) for r in rates)
        if name == "v1":
            if rates is not None and rates != (spec.fc6_rate,):
                raise _cfg_error(f"v1's one atrous rate is its VGG's fc6_rate ({spec.fc6_rate}), got atrous_rates="
                                 f"{rates!r}: set it with VGG(fc6_rate=...)")
            rates = (spec.fc6_rate,)
        elif rates is None:
            rates = V2_RATES if name == "v2" else V3_RATES[spec.output_stride]
        set_(self, "atrous_rates", rates)

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    @property
    def multi_grid(self):
        return getattr(self.backbone, "multi_grid", None)

    @property
    def aspp(self) -> ASPP | ASPPL | None:
        """The context module's spec: ASPP (v3, v3plus), ASPPL (v2), None (v1)."""
        spec = self.backbone
        if self.name == "v2":
            cin = spec.widths[4] if isinstance(spec, VGG) else spec.out_channels
            fc = self.fc_channels
            return ASPPL(cin, self.num_classes, self.atrous_rates, fc, self.dropout if fc is not None else None)
        if self.name in ("v3", "v3plus"):
            return ASPP(spec.out_channels, self.aspp_channels, self.atrous_rates, self.image_pooling,
                        self.aspp_separable, self.dropout)
        return None

    @property
    def aux_channels(self) -> tuple[int, int]:
        """(layer3's channels, the aux head's width = a quarter of them), as torchvision's FCNHead."""
        c = self.backbone.widths[2] * self.backbone.expansion
        return c, c // 4

    def describe(self) -> str:
        return f"DeepLab {self.name} ({_backbone_name(self.backbone)}, output stride {self.output_stride})"


def _trunk_is_vgg_pool5(config) -> bool:
    """v2 on VGG: the backbone stops at pool5 (ASPP-L's per-branch fc6/fc7 replace LargeFOV's)."""
    return config.name == "v2" and isinstance(config.backbone, VGG)


# ---------------------------------------------------------------------------------------------
# building a config


def _resolve_backbone(fn, name, backbone, output_stride, multi_grid, dilation_convention, fc6_rate):
    if isinstance(backbone, (ResNet, VGG)):
        if output_stride is not None and output_stride != backbone.output_stride:
            raise ValueError(f"{fn}: output_stride={output_stride!r} but the backbone spec {backbone!r} has "
                             f"output stride {backbone.output_stride}")
        if multi_grid is not None or dilation_convention != "torchvision":
            raise ValueError(f"{fn}: multi_grid and dilation_convention are set in a backbone spec "
                             f"(ResNet(depth, output_stride, dilation_convention, multi_grid)), not beside it")
        return backbone
    backbone = DEFAULT_BACKBONE[name] if backbone is None else backbone
    if backbone not in BACKBONES:
        raise ValueError(f"{fn}: backbone must be a ResNet or VGG spec or one of "
                         f"{', '.join(map(repr, BACKBONES))}, got {backbone!r}")
    if output_stride is not None:
        os_ = output_stride
    else:
        os_ = 8 if backbone == "vgg16" else DEFAULT_OUTPUT_STRIDE[name]
    if backbone == "vgg16":
        if os_ != 8:
            raise ValueError(f"{fn}: VGG-16 LargeFOV has output stride 8, got output_stride={os_!r}")
        if multi_grid is not None:
            raise ValueError(f"{fn}: multi_grid applies to a ResNet's layer4, not to VGG-16")
        return VGG(fc6_rate=fc6_rate) if fc6_rate is not None else VGG()
    depth = "mini" if backbone == "mini" else int(backbone[len("resnet"):])
    try:
        return ResNet(depth, os_, dilation_convention, multi_grid)
    except ValueError as e:
        raise ValueError(f"{fn}: {e}") from None


_OPTIONS = tuple(f.name for f in fields(DeepLabConfig) if f.name not in ("name", "backbone", "num_classes"))


def make_config(name, backbone=None, output_stride=None, num_classes=21, *, multi_grid=None,
                dilation_convention="torchvision", _fn="make_config", **options) -> DeepLabConfig:
    """The DeepLabConfig for ``name`` in {"v1", "v2", "v3", "v3plus"}.

    backbone: a ResNet or VGG spec, or a name: "vgg16", "resnet18", "resnet34", "resnet50", "resnet101",
      "resnet152", "mini" (the small ResNet of ``backbone``: ResNet-50's widths / 4). None: the paper's,
      "vgg16" for v1, "resnet101" for v2, "resnet50" for v3 and v3plus.
    output_stride: None: 8 for v1, v2 and any VGG, 16 for v3 and v3plus (VGG: 8 only).
    multi_grid, dilation_convention: for a ResNet named by a string (see ``ResNet``), e.g. (1, 2, 4).
    options: the other DeepLabConfig fields (atrous_rates, image_pooling, aspp_separable, dropout, aux,
      decoder_separable, align_corners, ...). v1 with backbone "vgg16" takes atrous_rates=(r,) as fc6's rate.
      With the mini backbone (named or a ResNet("mini") spec) the head widths the caller does not set are
      a quarter of the paper's, like the backbone's: aspp_channels 64, low_level_channels 12,
      decoder_channels 64 (``MINI_HEAD``; v3+ on 128x128: 0.14 G multiply-adds in the heads beside the
      backbone's 0.09 G, instead of 1.58 G at full width).
    """
    fn = _fn
    if name not in MODELS:
        raise ValueError(f"{fn}: name must be one of {', '.join(map(repr, MODELS))}, got {name!r}")
    unknown = [k for k in options if k not in _OPTIONS]
    if unknown:
        raise ValueError(f"{fn}: unknown option {unknown[0]!r}; the options are {', '.join(_OPTIONS)}, "
                         f"multi_grid and dilation_convention")
    fc6_rate = None
    if name == "v1" and backbone in (None, "vgg16") and options.get("atrous_rates") is not None:
        rates = options["atrous_rates"]
        if isinstance(rates, (tuple, list)) and len(rates) == 1:
            fc6_rate = rates[0]
    spec = _resolve_backbone(fn, name, backbone, output_stride, multi_grid, dilation_convention, fc6_rate)
    if isinstance(spec, ResNet) and spec.depth == "mini":
        options = {k: v for k, v in MINI_HEAD.items() if name in _APPLIES[k]} | options
    try:
        return DeepLabConfig(name, spec, num_classes, **options)
    except ValueError as e:  # name the function called, once: "make_config: ...", not "make_config: DeepLabConfig: ..."
        raise ValueError(f"{fn}: {str(e).removeprefix('DeepLabConfig: ')}") from None


# ---------------------------------------------------------------------------------------------
# parameters


def _check_config(fn, config):
    if not isinstance(config, DeepLabConfig):
        raise ValueError(f"{fn}: config must be a DeepLabConfig (make_config(...)), got {type(config).__name__}")


def _trunk_shapes(config):
    params, buffers = backbone_parameter_shapes(config.backbone)
    if _trunk_is_vgg_pool5(config):
        params = {k: v for k, v in params.items() if not k.startswith(("fc6.", "fc7."))}
    return params, buffers


def model_parameter_shapes(config) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in the reference twin's state_dict order (see the module's
    docstring for the names). num_batches_tracked is ()."""
    _check_config("model_parameter_shapes", config)
    bp, bb = _trunk_shapes(config)
    params = {f"backbone.{k}": v for k, v in bp.items()}
    buffers = {f"backbone.{k}": v for k, v in bb.items()}
    name, C = config.name, config.num_classes

    def add(shapes):
        params.update(shapes[0])
        buffers.update(shapes[1])

    if name == "v1":
        params["classifier.fc8.weight"] = (C, config.backbone.fc_channels, 1, 1)
        params["classifier.fc8.bias"] = (C,)
    elif name == "v2":
        add(aspp_parameter_shapes(config.aspp, "classifier"))
    elif name == "v3":
        a = config.aspp_channels
        add(aspp_parameter_shapes(config.aspp, "classifier.0"))
        conv_unit_shapes(params, buffers, "classifier", a, a, 3, conv="1", bn="2")
        params["classifier.4.weight"], params["classifier.4.bias"] = (C, a, 1, 1), (C,)
        if config.aux:
            cin, width = config.aux_channels
            conv_unit_shapes(params, buffers, "aux_classifier", cin, width, 3)
            params["aux_classifier.4.weight"], params["aux_classifier.4.bias"] = (C, width, 1, 1), (C,)
    else:
        a, low, d = config.aspp_channels, config.low_level_channels, config.decoder_channels
        add(aspp_parameter_shapes(config.aspp, "aspp"))
        if config.decoder_layout == "smp":
            conv_unit_shapes(params, buffers, "decoder.aspp_conv", a, a, 3, config.decoder_separable)
        conv_unit_shapes(params, buffers, "decoder.low_level", config.backbone.low_level_channels, low, 1)
        for i in range(_n_fuse(config)):
            conv_unit_shapes(params, buffers, f"decoder.fuse.{i}", d if i else a + low, d, 3, config.decoder_separable)
        params["classifier.weight"], params["classifier.bias"] = (C, d, 1, 1), (C,)
    return params, buffers


def _n_fuse(config) -> int:
    """The v3+ decoder's 3x3 convs after the concat: two (paper), one (smp)."""
    return 1 if config.decoder_layout == "smp" else 2


# the convs whose outputs are class scores (or, v2, terms of their sum), by the names of the module's docstring
_SCORE_LAYER = re.compile(r"(aux_)?classifier(\.4|\.fc8|\.branches\.\d+(\.fc8)?)?")


def is_score_layer(name) -> bool:
    """Whether the conv module ``name`` (a model's, e.g. "classifier.4"; no ".weight") outputs class
    scores: v1 classifier.fc8, v2 classifier.branches.{i} (ResNet form) or classifier.branches.{i}.fc8,
    v3 classifier.4 and aux_classifier.4, v3plus classifier."""
    return _SCORE_LAYER.fullmatch(name) is not None


def _score_std(shapes) -> dict:
    return {k: SCORE_STD for k in shapes if k.endswith(".weight") and is_score_layer(k[:-len(".weight")])}


def init_model(config, rng, dtype=np.float32) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fresh (params, buffers): conv weights Kaiming normal (fan-out), biases 0, BN 1 / 0, running
    statistics 0 / 1 (as ``init_backbone``; the backbone's draws come first), except the class-score
    convs (``is_score_layer``): N(0, 0.01) weights, zero bias, as DeepLab's released Caffe and TF models
    initialise them. Why: with Kaiming there the logits are as large as the features and a fresh model's
    loss is far above ln(num_classes) (7 classes, mini backbone, first training step: v3 and v3+ 6 to 9,
    v2 about 17, instead of ln 7 = 1.95); small scores start the training from nearly the uniform
    prediction (v1, v3, v3+ within 0.01 of ln C; v2's ResNet form, four 3x3 convs summed over the
    backbone's un-normalised features, 0.1 to 0.3 above)."""
    _check_config("init_model", config)
    shapes, buffer_shapes = model_parameter_shapes(config)
    return init_params(shapes, buffer_shapes, rng, dtype, "init_model", _score_std(shapes))


# ---------------------------------------------------------------------------------------------
# forward and backward


def _sub(d, prefix):
    """The entries below ``prefix.``, with the prefix cut off: the same arrays (in-place updates show)."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in d.items() if k.startswith(prefix + ".")}


def _vgg_pool5_forward(spec, params, x):
    """VGG-16 LargeFOV up to pool5 (no fc6, fc7): x -> ({"out": pool5}, [caches])."""
    steps, h = [], x
    for layer in spec.layers[:-2]:
        if layer.kind == "conv":
            h, c = conv_relu_forward(h, params, layer.name, layer.dilation)
        else:
            h, c = max_pool2d(h, layer.kernel, layer.stride, 1)
        steps.append(c)
    return {"out": h}, steps


def _vgg_pool5_backward(d_out, steps):
    grads, dh = {}, d_out
    for c in reversed(steps):
        if isinstance(c, MaxPoolCache):
            dh = max_pool2d_backward(dh, c)
        else:
            dh, g = conv_relu_backward(dh, c)
            grads.update(g)
    return dh, grads


def _layer3_step(spec) -> str:
    return f"layer3.{spec.blocks[2] - 1}"


def _layer3(bcache):
    """layer3's output, the input of the aux head: the last layer3 block's output, kept in its cache.
    (``backbone_forward`` returns only low_level and out.)"""
    step = _layer3_step(bcache.spec)
    return next(c.y for name, c in bcache.steps if name == step)


def _resnet_backward(spec, bcache, d_out, d_low, d_layer3):
    """``backbone_backward``, with a gradient joining at layer3's output too (the aux head's)."""
    if d_layer3 is None:
        return backbone_backward(spec, {"out": d_out, "low_level": d_low}, bcache)
    tap = _layer3_step(spec)
    block_backward = bottleneck_backward if spec.block == "bottleneck" else basic_block_backward
    grads, dh = {}, d_out
    for name, c in reversed(bcache.steps):
        if name == tap:
            dh = dh + d_layer3
        if name == bcache.low_level_step and d_low is not None:
            dh = dh + d_low
        dh, g = stem_backward(dh, c) if isinstance(c, StemCache) else block_backward(dh, c)
        grads.update(g)
    return dh, grads


class DeepLabCache(NamedTuple):
    """What ``model_backward`` needs, and what a training forward produced besides the logits."""

    config: DeepLabConfig
    backbone: BackboneCache | list   # a BackboneCache, or the VGG-to-pool5 caches (v2 on VGG)
    head: dict                       # the head's caches by step
    shapes: dict                     # step -> shape of its output
    aux: np.ndarray | None           # the aux head's logits (N, classes, H, W): v3 with aux=True, training
    dtype: np.dtype
    drop: dict                       # the dropout masks drawn outside the ASPP caches, by module name

    @property
    def masks(self) -> dict:
        """{dropout module name (the twin's): mask} of every dropout that ran (none in eval)."""
        out = dict(self.drop)
        a = self.head.get("aspp")
        if a is not None:
            out.update(a.masks)
        return out


def _check_input(fn, config, params, buffers, x, training):
    _check_config(fn, config)
    N, C, H, W = check_image(fn, x, training, config.output_stride, config.describe())
    os_ = config.output_stride
    if config.decoder_layout == "smp" and (H % os_ or W % os_):
        def up(s):
            return ", ".join(str(v) for v in sorted({s - s % os_, s - s % os_ + os_}) if v >= os_)
        raise ValueError(f"{fn}: x has shape {x.shape}, but {config.describe()} with decoder_layout='smp' needs H "
                         f"and W divisible by {os_} (smp's rule: its upsamplings are scale factors); nearest: "
                         f"H in {up(H)}, W in {up(W)} (pad the image)")
    if config.name == "v3plus" and config.align_corners and (H % os_ > 1 or W % os_ > 1):
        def near(s):
            return ", ".join(str(v) for v in sorted({s - s % os_, s - s % os_ + 1, s - s % os_ + os_}) if v >= os_)
        raise ValueError(f"{fn}: x has shape {x.shape}, but {config.describe()} with align_corners=True needs H "
                         f"and W = k * {os_} (smp) or k * {os_} + 1 (TF DeepLab), so that the decoder's feature maps "
                         f"line up; nearest: H in {near(H)}, W in {near(W)} (or align_corners=False, any size)")
    if training:
        hw = -(-H // os_) * -(-W // os_)
        if isinstance(config.backbone, ResNet) and N * hw < 2:
            raise ValueError(f"{fn}: x has shape {x.shape}, which gives a {-(-H // os_)}x{-(-W // os_)} last stage: "
                             f"training (batch norm) needs N * H_out * W_out >= 2")
        if config.name in ("v3", "v3plus") and config.image_pooling and N < 2:
            raise ValueError(f"{fn}: x has shape {x.shape}: training with image_pooling needs N >= 2 (the pooled "
                             f"branch's batch norm sees one value per image and channel)")
    check_subset(fn, config.describe(), *model_parameter_shapes(config), params, buffers, x.dtype)


def model_forward(config, params, buffers, x, training, rng=None, _fn="model_forward"):
    """x (N, 3, H, W) -> (logits (N, num_classes, H, W), DeepLabCache).

    training: batch norm on batch statistics (updating the running ones in ``buffers`` in place), dropout
    on with masks drawn from ``rng`` (a ``np.random.Generator``; needed when dropout > 0), and for v3 with
    aux=True the aux head runs too (its logits in ``cache.aux``). eval: running statistics, no dropout, no aux.
    """
    fn = _fn
    _check_input(fn, config, params, buffers, x, training)
    training = bool(training)
    N, _, H, W = x.shape
    ac, name = config.align_corners, config.name
    bp, bb = _sub(params, "backbone"), _sub(buffers, "backbone")
    if _trunk_is_vgg_pool5(config):
        feats, bcache = _vgg_pool5_forward(config.backbone, bp, x)
    else:
        feats, bcache = backbone_forward(config.backbone, bp, bb, x, training)
    head, shapes, drop, aux = {}, {"x": x.shape}, {}, None

    if name == "v1":
        h, mask = maybe_dropout(feats["out"], config.dropout, training, rng, fn)
        if mask is not None:
            drop["classifier.drop7"] = mask
        s, head["fc8"] = conv1x1_forward(h, params, "classifier.fc8")
    elif name == "v2":
        s, head["aspp"] = aspp_l_forward(config.aspp, params, {}, feats["out"], training, rng, "classifier")
    elif name == "v3":
        a, head["aspp"] = aspp_forward(config.aspp, params, buffers, feats["out"], training, rng, "classifier.0")
        h, head["conv"] = conv_unit_forward(a, params, buffers, "classifier", 1, False, training, conv="1", bn="2")
        s, head["classifier"] = conv1x1_forward(h, params, "classifier.4")
        if config.aux and training:
            h, head["aux_conv"] = conv_unit_forward(_layer3(bcache), params, buffers, "aux_classifier", 1, False, True)
            h, mask = maybe_dropout(h, AUX_DROPOUT, True, rng, fn)
            drop["aux_classifier.3"] = mask
            sa, head["aux_classifier"] = conv1x1_forward(h, params, "aux_classifier.4")
            shapes["aux_small"] = sa.shape
            aux = resize_bilinear(sa, (H, W), ac)
    else:
        sep = config.decoder_separable
        a, head["aspp"] = aspp_forward(config.aspp, params, buffers, feats["out"], training, rng, "aspp")
        if config.decoder_layout == "smp":
            a, head["aspp_conv"] = conv_unit_forward(a, params, buffers, "decoder.aspp_conv", 1, sep, training)
        low = feats["low_level"]
        shapes["aspp"] = a.shape
        up = resize_bilinear(a, low.shape[2:], ac)
        p, head["low_level"] = conv_unit_forward(low, params, buffers, "decoder.low_level", 1, False, training)
        h = concat([up, p])
        for i in range(_n_fuse(config)):
            h, head[f"fuse.{i}"] = conv_unit_forward(h, params, buffers, f"decoder.fuse.{i}", 1, sep, training)
        s, head["classifier"] = conv1x1_forward(h, params, "classifier")
    shapes["small"] = s.shape
    logits = resize_bilinear(s, (H, W), ac)
    return logits, DeepLabCache(config, bcache, head, shapes, aux, x.dtype, drop)


def _vgg_pool5_infer(spec, params, x):
    """``_vgg_pool5_forward`` without caches: x -> pool5."""
    h = x
    for layer in spec.layers[:-2]:
        h = (conv_relu_infer(h, params, layer.name, layer.dilation) if layer.kind == "conv"
             else max_pool2d_infer(h, layer.kernel, layer.stride, 1))
    return h


def model_infer(config, params, buffers, x, _fn="model_infer"):
    """Eval ``model_forward`` without caches: x (N, 3, H, W) -> logits (N, num_classes, H, W), the same
    up to float rounding (batch norm on the running statistics folded into one pass after each conv, with
    the ReLU and any residual sum; no dropout, no aux head). Nothing is kept for a backward."""
    fn = _fn
    _check_input(fn, config, params, buffers, x, False)
    N, _, H, W = x.shape
    ac, name = config.align_corners, config.name
    if _trunk_is_vgg_pool5(config):
        out = _vgg_pool5_infer(config.backbone, _sub(params, "backbone"), x)
    else:
        feats = backbone_infer(config.backbone, _sub(params, "backbone"), _sub(buffers, "backbone"), x)
        out = feats["out"]
    if name == "v1":
        s = conv1x1_infer(out, params, "classifier.fc8")
    elif name == "v2":
        s = aspp_l_infer(config.aspp, params, {}, out, "classifier")
    elif name == "v3":
        a = aspp_infer(config.aspp, params, buffers, out, "classifier.0")
        h = conv_unit_infer(a, params, buffers, "classifier", 1, False, conv="1", bn="2")
        s = conv1x1_infer(h, params, "classifier.4")
    else:
        sep = config.decoder_separable
        a = aspp_infer(config.aspp, params, buffers, out, "aspp")
        if config.decoder_layout == "smp":
            a = conv_unit_infer(a, params, buffers, "decoder.aspp_conv", 1, sep)
        low = feats["low_level"]
        up = resize_bilinear_infer(a, low.shape[2:], ac)
        h = np.concatenate([up, conv_unit_infer(low, params, buffers, "decoder.low_level", 1, False)], axis=1)
        for i in range(_n_fuse(config)):
            h = conv_unit_infer(h, params, buffers, f"decoder.fuse.{i}", 1, sep)
        s = conv1x1_infer(h, params, "classifier")
    return resize_bilinear_infer(s, (H, W), ac)


def _check_grad(fn, name, d, shape, dtype):
    _float_array(fn, name, d)
    if d.dtype != dtype:
        raise ValueError(f"{fn}: {name} has dtype {d.dtype} but the forward's x had {dtype}")
    if d.shape != shape:
        raise ValueError(f"{fn}: {name} has shape {d.shape}, expected {shape} (the forward's {name[1:]})")


def model_backward(dlogits, cache, daux=None, _fn="model_backward"):
    """dlogits (N, num_classes, H, W) (and daux, the aux logits' gradient, for v3 with aux=True after a
    training forward) -> (dx (N, 3, H, W), grads), grads keyed and ordered like the params. Parameters the
    forward did not use (the aux head in eval, or without daux) get zero gradients."""
    fn = _fn
    if not isinstance(cache, DeepLabCache):
        raise ValueError(f"{fn}: cache must be the DeepLabCache returned by the forward, got {type(cache).__name__}")
    config, head, shapes, ac = cache.config, cache.head, cache.shapes, cache.config.align_corners
    dt = cache.dtype
    small = shapes["small"]
    N, C = small[:2]
    _check_grad(fn, "dlogits", dlogits, (N, C) + shapes["x"][2:], dt)
    if daux is not None:
        if cache.aux is None:
            raise ValueError(f"{fn}: daux given, but the forward computed no aux logits (aux=True and training only)")
        _check_grad(fn, "daux", daux, cache.aux.shape, dt)

    grads = {}
    ds = resize_bilinear_backward(dlogits, small, ac)
    d_low = d_layer3 = None
    if config.name == "v1":
        dh, g = conv1x1_backward(ds, head["fc8"])
        grads.update(g)
        mask = cache.drop.get("classifier.drop7")
        d_out = dh if mask is None else dropout_backward(dh, mask)
    elif config.name == "v2":
        d_out, g = aspp_l_backward(ds, head["aspp"])
        grads.update(g)
    elif config.name == "v3":
        dh, g = conv1x1_backward(ds, head["classifier"])
        grads.update(g)
        dh, g = conv_unit_backward(dh, head["conv"])
        grads.update(g)
        d_out, g = aspp_backward(dh, head["aspp"])
        grads.update(g)
        if daux is not None:
            dh, g = conv1x1_backward(resize_bilinear_backward(daux, shapes["aux_small"], ac), head["aux_classifier"])
            grads.update(g)
            mask = cache.drop.get("aux_classifier.3")
            dh = dh if mask is None else dropout_backward(dh, mask)
            d_layer3, g = conv_unit_backward(dh, head["aux_conv"])
            grads.update(g)
    else:
        dh, g = conv1x1_backward(ds, head["classifier"])
        grads.update(g)
        for i in reversed(range(_n_fuse(config))):
            dh, g = conv_unit_backward(dh, head[f"fuse.{i}"])
            grads.update(g)
        d_up, d_proj = concat_backward(dh, [config.aspp_channels, config.low_level_channels])
        d_low, g = conv_unit_backward(d_proj, head["low_level"])
        grads.update(g)
        da = resize_bilinear_backward(d_up, shapes["aspp"], ac)
        if "aspp_conv" in head:
            da, g = conv_unit_backward(da, head["aspp_conv"])
            grads.update(g)
        d_out, g = aspp_backward(da, head["aspp"])
        grads.update(g)

    if _trunk_is_vgg_pool5(config):
        dx, g = _vgg_pool5_backward(d_out, cache.backbone)
    else:
        dx, g = _resnet_backward(config.backbone, cache.backbone, d_out, d_low, d_layer3) \
            if isinstance(config.backbone, ResNet) else backbone_backward(config.backbone, {"out": d_out}, cache.backbone)
    grads.update({f"backbone.{k}": v for k, v in g.items()})
    order = model_parameter_shapes(config)[0]
    return dx, {k: grads[k] if k in grads else np.zeros(shape, dtype=dt) for k, shape in order.items()}


# ---------------------------------------------------------------------------------------------
# the model object


@dataclass
class DeepLab:
    """A DeepLab model: config, weights, mode.

    ``model(x)`` -> logits (N, num_classes, H, W) at the input's resolution; ``forward(x)`` -> (logits,
    cache); ``backward(dlogits, cache, daux=None)`` -> grads keyed like ``params``; ``train()`` / ``eval()``
    switch batch norm (batch or running statistics; training updates ``buffers`` in place), dropout
    (masks drawn from ``rng``) and the aux head. params and buffers: torchvision-style names (see the
    module's docstring), all float32 or all float64; x must have their dtype.
    """

    config: DeepLabConfig
    params: dict = field(repr=False)
    buffers: dict = field(repr=False)
    training: bool = False
    rng: np.random.Generator = field(default_factory=np.random.default_rng, repr=False)

    def __post_init__(self):
        fn = "DeepLab"
        _check_config(fn, self.config)
        if not isinstance(self.params, dict) or not self.params:
            raise ValueError(f"{fn}: params must be a non-empty dict of numpy arrays, got {type(self.params).__name__}")
        first = next(iter(self.params.values()))
        dtype = getattr(first, "dtype", None)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"{fn}: params must be float32 or float64 numpy arrays, got {dtype}")
        check_subset(fn, self.config.describe(), *model_parameter_shapes(self.config), self.params, self.buffers, dtype)
        if not isinstance(self.training, (bool, np.bool_)):
            raise ValueError(f"{fn}: training must be True or False, got {self.training!r}")
        if not isinstance(self.rng, np.random.Generator):
            raise ValueError(f"{fn}: rng must be a numpy.random.Generator, got {type(self.rng).__name__}")

    @property
    def dtype(self) -> np.dtype:
        return next(iter(self.params.values())).dtype

    def __call__(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes, H, W). Eval: ``model_infer`` (no caches kept);
        training: ``forward``'s logits (batch statistics, dropout)."""
        if self.training:
            return self.forward(x)[0]
        return model_infer(self.config, self.params, self.buffers, x, "DeepLab.forward")

    def forward(self, x):
        """x (N, 3, H, W) -> (logits (N, num_classes, H, W), DeepLabCache); cache.aux: the aux logits."""
        return model_forward(self.config, self.params, self.buffers, x, self.training, self.rng, "DeepLab.forward")

    def backward(self, dlogits, cache, daux=None):
        """dlogits (and daux) -> grads, keyed and ordered like params."""
        return model_backward(dlogits, cache, daux, "DeepLab.backward")[1]

    def train(self, mode=True):
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"DeepLab.train: mode must be True or False, got {mode!r}")
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)


def build_model(name, backbone=None, output_stride=None, num_classes=21, *, rng=None, dtype=np.float32,
                **options) -> DeepLab:
    """A DeepLab with fresh weights (``init_model``: class-score convs N(0, 0.01)), in eval mode. Arguments
    as ``make_config`` (the mini backbone gets heads a quarter as wide unless told otherwise); rng: a
    ``np.random.Generator`` for the weights and then the dropout masks (None: unseeded)."""
    fn = "build_model"
    config = make_config(name, backbone, output_stride, num_classes, _fn=fn, **options)
    rng = np.random.default_rng() if rng is None else rng
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{fn}: rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    shapes, buffer_shapes = model_parameter_shapes(config)
    params, buffers = init_params(shapes, buffer_shapes, rng, dtype, fn, _score_std(shapes))
    return DeepLab(config, params, buffers, False, rng)
