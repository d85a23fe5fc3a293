"""The DeepLab family as data: ``DeepLabConfig`` names a model with the papers' words, and ``MODELS``, the
registry, says how each member is built: the backbone spec it runs (its trunk) and the ``Step``s after it.

    v1      VGG-16 LargeFOV (fc6 3x3 at rate 12, fc7 1x1) -> LargeFOVHead (drop7, fc8) -> bilinear x8
    v2      ResNet-101 at output stride 8 -> ASPP-L: per rate (6, 12, 18, 24) one 3x3 conv to the classes,
            summed (the released DeepLab-v2 ResNet-101) -> bilinear x8; or VGG-16 up to pool5 -> ASPP-L with
            fc6-fc7-fc8 per rate (the paper's VGG-16 ASPP-L), summed -> bilinear x8
    v3      ResNet -> DeepLabHead (ASPP -> 3x3 conv, BN, ReLU -> 1x1 to the classes) -> bilinear to the input
            (torchvision's ``deeplabv3_resnet50``), optionally FCNHead on layer3 (aux) for training
    v3plus  ResNet -> ASPP -> Decoder (resize to the stride-4 ``low_level`` features, concat with their 1x1
            projection to 48 channels, two 3x3 convs) -> Classifier (1x1) -> bilinear to the input
    v3 on MobileNetV3-Large: torchvision's ``deeplabv3_mobilenet_v3_large`` (DeepLabHead on the 960-channel
            features at output stride 16, ASPP rates (12, 24, 36); aux FCNHead on the stride-8 ``low``)
    lraspp  MobileNetV3-Large -> LRASPPHead (``low`` at stride 8, ``out`` at 16) -> bilinear to the input
            (torchvision's ``lraspp_mobilenet_v3_large``)
    linear  a ViT's token map (stride 16) -> Classifier (a 1x1 conv to the classes) -> bilinear to the input:
            SETR-naive / Segmenter-linear, the transformer baseline without a context module
    segformer  SegFormer (``specs.segformer``): the MiT's four stages -> SegFormerHead (all-MLP decoder, stride 4)
            -> Classifier -> bilinear to the input (align_corners False; smp's SegFormer: True, see
            ``scratch.segformer``)
    v3, v3plus on a ViT (``specs.vit``): ASPP on the token map reshaped to stride 16, rates scaled to the grid;
            v3+'s decoder on the stride-4 map of a small conv stem beside the patch embedding

The scratch model (``minideeplab.scratch.deeplab``) and its twin (``minideeplab.reference.deeplab``) run any
config the same generic way: the backbone's features, then each step in order, then the "scores" resized to
the input. A new member is one function here that returns its trunk and steps, and one entry in ``MODELS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from functools import cached_property

from minideeplab.specs.aspp import ASPP, ASPPL
from minideeplab.specs.backbone import VGG, ResNet
from minideeplab.specs.checks import check_flag, check_int, check_real, is_int
from minideeplab.specs.heads import (DECODER_LAYOUTS, Classifier, CRFHead, DeepLabHead, Decoder, FCNHead,
                                     LargeFOVHead, LRASPPHead, SegFormerHead, Step)
from minideeplab.specs.mobilenet import MOBILENET_V3_RATES, MobileNetV3
from minideeplab.specs.mobilenet_v2 import MobileNetV2
from minideeplab.specs.segformer import MIT_SIZES, STAGES, MiT
from minideeplab.specs.vit import ViT
from minideeplab.specs.xception import Xception

__all__ = ["MODELS", "BACKBONES", "DeepLabConfig", "make_config", "is_score_layer", "SCORE_STD", "AUX_DROPOUT",
           "MINI_HEAD", "V2_RATES", "V3_RATES", "MOBILENET_V3_RATES", "DECODER_LAYOUTS", "NAMED_BACKBONES"]


SPECS = (ResNet, VGG, MobileNetV3, Xception, MobileNetV2, ViT, MiT)  # the backbone specs a config takes
# the specs each model takes, and what its message says of the model
MODEL_SPECS = {"v1": (VGG,), "v2": (ResNet, VGG), "v3": (ResNet, MobileNetV3, Xception, MobileNetV2, ViT),
               "v3plus": (ResNet, Xception, MobileNetV2, ViT), "lraspp": (MobileNetV3,), "linear": (ViT,),
               "segformer": (MiT,)}
_MODEL_TITLES = {"v1": "v1 (DeepLab-LargeFOV)", "lraspp": "lraspp (LR-ASPP)", "linear": "linear (SETR-naive)"}
_MODEL_WHY = {"lraspp": " (its stride-8 'low' features)"}
DEFAULT_BACKBONE = {"v1": "vgg16", "v2": "resnet101", "v3": "resnet50", "v3plus": "resnet50",
                    "lraspp": "mobilenet_v3_large", "linear": "vit_mini", "segformer": "mit_mini"}
DEFAULT_OUTPUT_STRIDE = {"v1": 8, "v2": 8, "v3": 16, "v3plus": 16, "lraspp": 16, "linear": 16, "segformer": 32}
_NO_CONTEXT = ("lraspp", "linear", "segformer")  # models with no atrous convolution and no dropout
V2_RATES = (6, 12, 18, 24)                                  # ASPP-L
V3_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}  # tied to the output stride (v3 paper)
AUX_DROPOUT = 0.1                                           # torchvision's FCNHead
MINI_HEAD = {"aspp_channels": 64, "low_level_channels": 12, "decoder_channels": 64}  # the paper's / 4, as the mini
SCORE_STD = 0.01                                            # DeepLab's init of the class-score convs

# fields that mean something only for some models: a non-default value elsewhere is an error
_APPLIES = {
    "image_pooling": ("v3", "v3plus"), "aspp_separable": ("v3", "v3plus"), "aspp_channels": ("v3", "v3plus"),
    "fc_channels": ("v2",), "aux": ("v3",),
    "low_level_channels": ("v3plus",), "decoder_channels": ("v3plus", "segformer"), "decoder_separable": ("v3plus",),
    "decoder_layout": ("v3", "v3plus"), "inter_channels": ("lraspp",),
}


def _cfg_error(msg):
    return ValueError(f"DeepLabConfig: {msg}")


def _one_of(types) -> str:
    """"A, B or C" of the types' names."""
    names = [t.__name__ for t in types]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class DeepLabConfig:
    """One member of the family. Built by ``make_config`` / ``build_model``, or directly.

    name: "v1", "v2", "v3", "v3plus", "lraspp" or "linear" (a ViT's tokens, a 1x1 conv to the classes).
    backbone: a ``ResNet``, ``VGG``, ``MobileNetV3``, ``Xception`` (``specs.xception``) or ``MobileNetV2``
      (``specs.mobilenet_v2``) spec (it carries ``output_stride``, ``multi_grid`` and the dilation
      convention). v1: VGG. v2: ResNet or VGG (used up to pool5: ASPP-L's fc6 replaces LargeFOV's).
      v3: ResNet, MobileNetV3, Xception or MobileNetV2. v3plus: ResNet, Xception or MobileNetV2. lraspp:
      MobileNetV3. aux: ResNet or MobileNetV3.
    num_classes: of the logits (21 for PASCAL VOC).
    atrous_rates: v3/v3plus: the ASPP's 3x3 branches, None -> tied to the output stride: (6, 12, 18) at
      16, (12, 24, 36) at 8, (3, 6, 9) at 32. v2: ASPP-L's branches, None -> (6, 12, 18, 24). v1: the
      VGG's fc6 rate, (backbone.fc6_rate,) (set it in the VGG spec). v3 on MobileNetV3: None ->
      (12, 24, 36) at output stride 16, as torchvision's ``deeplabv3_mobilenet_v3_large`` (torchvision
      issue #7956: its DeepLabHead's default rates, kept for the released weights). lraspp: none (None).
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
      dropout 0.1, 1x1 to the classes, resized to the input. Computed only when training. On MobileNetV3
      it reads ``low`` (features[4], stride 8, 40 channels), as torchvision's.
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
    inter_channels: LR-ASPP's ``cbr`` and ``scale`` width, 128 (lraspp; torchvision's).
    crf: the dense CRF as the last layer (``specs.heads.CRFHead``, any model): None or False (none), True
      (CRFHead's defaults: 5 mean-field iterations, DeepLab's kernel weights, Potts), a dict of CRFHead's
      arguments, e.g. dict(n_iters=5, bi_xy_std=40.0) (plain values, so it fits TrainConfig.model_options),
      or a CRFHead. Resolved on construction to a CRFHead (num_classes and align_corners the model's) or None.
      It refines the "scores", resized to the input, with the input's colours: step "crf" after the others.

    Derived: ``output_stride``, ``multi_grid``, ``aspp`` (the ASPP / ASPPL spec, None for v1).
    """

    name: str
    backbone: ResNet | VGG | MobileNetV3
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
    inter_channels: int = 128
    crf: CRFHead | dict | bool | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        name, spec = self.name, self.backbone
        if name not in MODELS:
            raise _cfg_error(f"name must be one of {', '.join(map(repr, MODELS))}, got {name!r}")
        if not isinstance(spec, SPECS):
            raise _cfg_error(f"backbone must be a {_one_of(SPECS)} spec, got {type(spec).__name__}")
        if not isinstance(spec, MODEL_SPECS[name]):
            raise _cfg_error(f"{_MODEL_TITLES.get(name, name)} needs a {_one_of(MODEL_SPECS[name])} backbone"
                             f"{_MODEL_WHY.get(name, '')}, got {spec!r}")
        if self.aux and spec.aux_tap is None:
            raise _cfg_error(f"aux (torchvision's FCN head) needs a {_one_of(t for t in SPECS if t.aux_tap)} "
                             f"backbone, got {spec!r}")
        for f in ("num_classes", "aspp_channels", "low_level_channels", "decoder_channels", "inter_channels"):
            set_(self, f, check_int("DeepLabConfig", f, getattr(self, f)))
        for f in ("image_pooling", "aspp_separable", "aux", "decoder_separable", "align_corners"):
            set_(self, f, check_flag("DeepLabConfig", f, getattr(self, f)))
        if self.decoder_layout not in DECODER_LAYOUTS:
            raise _cfg_error(f"decoder_layout must be one of {', '.join(map(repr, DECODER_LAYOUTS))}, "
                             f"got {self.decoder_layout!r}")
        set_(self, "dropout", check_real("DeepLabConfig", "dropout", self.dropout, 0, 1, hi_open=True))
        if name in _NO_CONTEXT and self.dropout not in (0.0, 0.5):
            raise _cfg_error(f"dropout={self.dropout!r}: {_MODEL_TITLES[name]} has no dropout")
        if name in _APPLIES["low_level_channels"] and spec.low_level_channels is None:
            raise _cfg_error(f"{name} reads stride-4 'low_level' features, which {spec.label} has none of: build "
                             f"it with a stem (ViT(..., low_level_stem=channels)), or name it (backbone='vit_mini')")
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
            if not is_int(fc) or fc < 1:
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
            if not isinstance(rates, (tuple, list)) or not all(is_int(r) and r >= 1 for r in rates) or not rates:
                raise _cfg_error(f"atrous_rates must be None or a non-empty tuple of ints >= 1, got {rates!r}")
            rates = tuple(int(r) for r in rates)
        if name == "v1":
            if rates is not None and rates != (spec.fc6_rate,):
                raise _cfg_error(f"v1's one atrous rate is its VGG's fc6_rate ({spec.fc6_rate}), got atrous_rates="
                                 f"{rates!r}: set it with VGG(fc6_rate=...)")
            rates = (spec.fc6_rate,)
        elif name in _NO_CONTEXT:
            if rates is not None:
                raise _cfg_error(f"atrous_rates={rates!r}: {_MODEL_TITLES[name]} has no atrous convolution")
        elif rates is None and spec.default_aspp_rates is not None:
            rates = spec.default_aspp_rates
        elif rates is None:
            rates = V2_RATES if name == "v2" else V3_RATES[spec.output_stride]
        set_(self, "atrous_rates", rates)
        set_(self, "crf", self._resolve_crf())

    def _resolve_crf(self) -> CRFHead | None:
        crf, fixed = self.crf, {"num_classes": self.num_classes, "align_corners": self.align_corners}
        if crf is None or crf is False:
            return None
        if crf is True:
            crf = {}
        if isinstance(crf, CRFHead):
            crf = {f.name: getattr(crf, f.name) for f in fields(crf)}
        if not isinstance(crf, dict):
            raise _cfg_error(f"crf must be None, False, True, a dict of CRFHead's arguments (e.g. "
                             f"{{'n_iters': 5}}) or a CRFHead, got {crf!r}")
        for k, v in fixed.items():
            if k in crf and crf[k] != v:
                raise _cfg_error(f"crf: {k}={crf[k]!r} differs from the model's {k}={v!r} (leave it out)")
        known = {f.name for f in fields(CRFHead)} - set(fixed)
        unknown = [k for k in crf if k not in known and k not in fixed]
        if unknown:
            raise _cfg_error(f"crf: unknown argument {unknown[0]!r}; CRFHead's are {', '.join(sorted(known))}")
        try:
            return CRFHead(**{**crf, **fixed})
        except (ValueError, TypeError) as e:
            raise _cfg_error(f"crf: {e}") from None

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
        """(the channels of the backbone's aux tap (ResNet: layer3; MobileNetV3: low), the aux head's width = a
        quarter of them), as torchvision's FCNHead."""
        c = self.backbone.aux_channels
        return c, c // 4

    @cached_property
    def _plan(self) -> tuple:
        trunk, steps = MODELS[self.name](self)
        if self.crf is not None:  # any model: it reads the scores (and the input) and writes them, refined
            steps += (Step("crf", self.crf, ("scores", "input"), "scores"),)
        return trunk, steps

    @property
    def trunk(self) -> ResNet | VGG:
        """The backbone spec the model runs: ``backbone``, except v2 on VGG (up to pool5: ASPP-L's branches
        have their own fc6 and fc7)."""
        return self._plan[0]

    @property
    def steps(self) -> tuple[Step, ...]:
        """The modules after the backbone, in order (see ``Step``)."""
        return self._plan[1]

    @property
    def aspps(self) -> tuple[ASPP, ...]:
        """The ASPP specs among the steps (v3: inside its DeepLabHead; v3+: its own step)."""
        found = (s.spec.aspp if isinstance(s.spec, DeepLabHead) else s.spec for s in self.steps)
        return tuple(a for a in found if isinstance(a, ASPP))

    @property
    def decoder(self) -> Decoder | None:
        """v3+'s Decoder spec (None for the others)."""
        return next((s.spec for s in self.steps if isinstance(s.spec, Decoder)), None)

    def describe(self) -> str:
        crf = f", CRF layer ({self.crf.n_iters} iterations)" if self.crf is not None else ""
        return f"DeepLab {self.name} ({self.backbone.label}, output stride {self.output_stride}{crf})"


# ---------------------------------------------------------------------------------------------
# the registry: name -> (trunk, steps)


def _v1(c: DeepLabConfig):
    return c.backbone, (Step("classifier", LargeFOVHead(c.backbone.fc_channels, c.num_classes, c.dropout), ("out",),
                             "scores"),)


def _v2(c: DeepLabConfig):
    trunk = replace(c.backbone, fc=False) if isinstance(c.backbone, VGG) else c.backbone
    return trunk, (Step("classifier", c.aspp, ("out",), "scores"),)


def _v3(c: DeepLabConfig):
    steps = (Step("classifier", DeepLabHead(c.aspp, c.num_classes), ("out",), "scores"),)
    if c.aux:
        head = FCNHead(c.aux_channels[0], c.num_classes, AUX_DROPOUT)
        steps += (Step("aux_classifier", head, (c.backbone.aux_tap,), "aux", training_only=True),)
    return c.backbone, steps


def _lraspp(c: DeepLabConfig):
    b = c.backbone
    head = LRASPPHead(b.low_channels, b.out_channels, c.num_classes, c.inter_channels, c.align_corners)
    return b, (Step("classifier", head, ("low", "out"), "scores"),)


def _v3plus(c: DeepLabConfig):
    decoder = Decoder(c.aspp_channels, c.backbone.low_level_channels, c.low_level_channels, c.decoder_channels,
                      c.decoder_separable, c.decoder_layout, c.align_corners)
    return c.backbone, (Step("aspp", c.aspp, ("out",), "aspp"),
                        Step("decoder", decoder, ("aspp", "low_level"), "decoder"),
                        Step("classifier", Classifier(c.decoder_channels, c.num_classes), ("decoder",), "scores"))


def _linear(c: DeepLabConfig):
    return c.backbone, (Step("classifier", Classifier(c.backbone.out_channels, c.num_classes), ("out",), "scores"),)


def _segformer(c: DeepLabConfig):
    b = c.backbone
    return b, (Step("decoder", SegFormerHead(b.widths, c.decoder_channels), STAGES, "decoder"),
               Step("classifier", Classifier(c.decoder_channels, c.num_classes), ("decoder",), "scores"))


MODELS = {"v1": _v1, "v2": _v2, "v3": _v3, "v3plus": _v3plus, "lraspp": _lraspp, "linear": _linear,
          "segformer": _segformer}


# ---------------------------------------------------------------------------------------------
# building a config


def _vgg(fn, backbone, os_, multi_grid, dilation_convention, fc6_rate, model=None):
    if os_ is not None and os_ != 8:
        raise ValueError(f"{fn}: VGG-16 LargeFOV has output stride 8, got output_stride={os_!r}")
    if multi_grid is not None:
        raise ValueError(f"{fn}: multi_grid applies to a ResNet's layer4, not to VGG-16")
    return VGG(fc6_rate=fc6_rate) if fc6_rate is not None else VGG()


def _resnet(depth):
    def make(fn, backbone, os_, multi_grid, dilation_convention, fc6_rate, model=None):
        return ResNet(depth, os_, dilation_convention, multi_grid)
    return make


def _plain(make_spec):
    """A backbone built from its output stride alone (multi_grid and dilation_convention are a ResNet's)."""
    def make(fn, backbone, os_, multi_grid, dilation_convention, fc6_rate, model=None):
        if multi_grid is not None or dilation_convention != "torchvision":
            raise ValueError(f"{fn}: multi_grid and dilation_convention apply to a ResNet, not to {backbone}")
        return make_spec(os_)
    return make


# the named ViTs: (embed_dim, depth, num_heads, mlp_ratio, img_size, class_token, stem channels, small_heads,
# neighbourhood).
# vit_mini: built for the 128 px crops, trains on a CPU about as fast as the mini ResNet v3+ and sits within 1.5x
# of its parameters and multiply-adds with any of the heads (the attention study's budget). Issue 14 proposed
# width 128, depth 6; measured here (torch trainer, 1 thread, 8 crops of 128 px) that ViT + linear head steps in
# 0.43 s against the mini v3+'s 0.77 s and has 0.088 G multiply-adds against 0.238 G (2.7x fewer): outside the
# budget. Width 192 (ViT-Tiny's width and heads), depth 6 (half its depth): 0.78 s, 0.19 G; with the MLP 4x as
# wide, v3+ on it has 3.30 M parameters, 1.506x the mini v3+'s 2.19 M, so the MLP is 3.5x (672). No class token (a
# segmentation backbone does not need one, and vit_mini_na, the same ViT with dilated neighbourhood attention
# in blocks 0-3, cannot have one). vit_tiny / vit_small: timm's vit_*_patch16_224 layouts.
VIT_MINI_NA = ((0, 3, 1), (1, 3, 2), (2, 3, 1), (3, 3, 2))  # DiNAT: local, then dilated (rate floor(8 / 3) = 2)
_VITS = {"vit_mini": (192, 6, 3, 3.5, (128, 128), False, 32, True, ()),
         "vit_mini_na": (192, 6, 3, 3.5, (128, 128), False, 32, True, VIT_MINI_NA),
         "vit_tiny": (192, 12, 3, 4.0, (224, 224), True, 64, False, ()),
         "vit_small": (384, 12, 6, 4.0, (224, 224), True, 64, False, ())}


def _vit(fn, backbone, os_, multi_grid, dilation_convention, fc6_rate, model=None):
    """A named ViT for a model: patch 16 (output stride 16 only), position embeddings resized for other inputs,
    the stride-4 stem only when the model reads ``low_level`` (v3plus)."""
    if multi_grid is not None or dilation_convention != "torchvision":
        raise ValueError(f"{fn}: multi_grid and dilation_convention apply to a ResNet, not to {backbone}")
    if os_ not in (None, 16):
        raise ValueError(f"{fn}: {backbone} has output stride 16 (its 16x16 patches), got output_stride={os_!r}")
    D, depth, heads, mlp_ratio, size, cls, stem, small, na = _VITS[backbone]
    return ViT(D, depth, heads, 16, mlp_ratio, size, class_token=cls, resize_pos_embed=True, neighbourhood=na,
               low_level_stem=stem if model in _APPLIES["low_level_channels"] else None, name=backbone,
               small_heads=small)


# the named MiTs: smp's mit_b0 / mit_b1, and mit_mini, SegFormer at the mini v3+'s budget (parameters and
# multiply-adds within 1.5x, ``ablate.attention``; at 128 px B0 itself has 3.37 M parameters with the decoder 64
# wide): B0's layout (sr ratios 8, 4, 2, 1; heads 32 wide) with widths (32, 64, 128, 160) and depths (3, 3, 3, 2),
# the decoder a quarter as wide (64) as the mini ResNet's heads.
_MITS = {"mit_b0": MiT(*MIT_SIZES["mit_b0"], name="mit_b0"), "mit_b1": MiT(*MIT_SIZES["mit_b1"], name="mit_b1"),
         "mit_mini": MiT((32, 64, 128, 160), (3, 3, 3, 2), (1, 2, 4, 5), name="mit_mini", small_heads=True)}


def _mit(fn, backbone, os_, multi_grid, dilation_convention, fc6_rate, model=None):
    if multi_grid is not None or dilation_convention != "torchvision":
        raise ValueError(f"{fn}: multi_grid and dilation_convention apply to a ResNet, not to {backbone}")
    if os_ not in (None, 32):
        raise ValueError(f"{fn}: {backbone} has output stride 32 (its last stage), got output_stride={os_!r}")
    return _MITS[backbone]


# make_config's backbone names -> fn(fn, name, output_stride, multi_grid, dilation_convention, fc6_rate, model)
# -> spec (model: the model's name, for a backbone whose parts depend on what the model reads)
NAMED_BACKBONES = {"vgg16": _vgg, **{f"resnet{d}": _resnet(d) for d in (18, 34, 50, 101, 152)},
                   "mini": _resnet("mini"), "mobilenet_v3_large": _plain(lambda os_: MobileNetV3(output_stride=os_)),
                   **{f"xception{d}": _plain(lambda os_, d=d: Xception(d, os_)) for d in (41, 65, 71)},
                   "mobilenet_v2": _plain(MobileNetV2), **{name: _vit for name in _VITS},
                   **{name: _mit for name in _MITS}}
BACKBONES = tuple(NAMED_BACKBONES)


def _resolve_backbone(fn, name, backbone, output_stride, multi_grid, dilation_convention, fc6_rate):
    if isinstance(backbone, SPECS):
        if output_stride is not None and output_stride != backbone.output_stride:
            raise ValueError(f"{fn}: output_stride={output_stride!r} but the backbone spec {backbone!r} has "
                             f"output stride {backbone.output_stride}")
        if multi_grid is not None or dilation_convention != "torchvision":
            raise ValueError(f"{fn}: multi_grid and dilation_convention are set in a backbone spec "
                             f"(ResNet(depth, output_stride, dilation_convention, multi_grid)), not beside it")
        return backbone
    backbone = DEFAULT_BACKBONE[name] if backbone is None else backbone
    if backbone not in NAMED_BACKBONES:
        raise ValueError(f"{fn}: backbone must be a {_one_of(SPECS)} spec or one of "
                         f"{', '.join(map(repr, BACKBONES))}, got {backbone!r}")
    os_ = output_stride if output_stride is not None or backbone == "vgg16" else DEFAULT_OUTPUT_STRIDE[name]
    try:
        return NAMED_BACKBONES[backbone](fn, backbone, os_, multi_grid, dilation_convention, fc6_rate, name)
    except ValueError as e:
        raise ValueError(f"{fn}: {str(e).removeprefix(f'{fn}: ')}") from None


_OPTIONS = tuple(f.name for f in fields(DeepLabConfig) if f.name not in ("name", "backbone", "num_classes"))


def make_config(name, backbone=None, output_stride=None, num_classes=21, *, multi_grid=None,
                dilation_convention="torchvision", _fn="make_config", **options) -> DeepLabConfig:
    """The DeepLabConfig for ``name`` in {"v1", "v2", "v3", "v3plus", "lraspp", "linear"}.

    backbone: a ResNet, VGG, MobileNetV3, Xception or MobileNetV2 spec, or a name: "vgg16", "resnet18",
      "resnet34", "resnet50", "resnet101", "resnet152", "mini" (the small ResNet of ``backbone``: ResNet-50's
      widths / 4), "mobilenet_v3_large" (v3, lraspp), "xception41", "xception65", "xception71" (aligned
      Xception), "mobilenet_v2" (smp's encoder; v3 and v3plus), "vit_mini", "vit_mini_na", "vit_tiny",
      "vit_small" (``_VITS``; linear, v3, v3plus; v3plus gets the ViT's stride-4 conv stem). None: the paper's, "vgg16" for v1,
      "resnet101" for v2, "resnet50" for v3 and v3plus, "mobilenet_v3_large" for lraspp.
    output_stride: None: 8 for v1, v2 and any VGG, 16 for v3, v3plus and lraspp (VGG: 8 only; MobileNetV3:
      16 or 32).
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
    if (isinstance(spec, ResNet) and spec.depth == "mini") or getattr(spec, "small_heads", False):
        options = {k: v for k, v in MINI_HEAD.items() if name in _APPLIES[k]} | options
    try:
        return DeepLabConfig(name, spec, num_classes, **options)
    except ValueError as e:  # name the function called, once: "make_config: ...", not "make_config: DeepLabConfig: ..."
        raise ValueError(f"{fn}: {str(e).removeprefix('DeepLabConfig: ')}") from None


# ---------------------------------------------------------------------------------------------
# initialisation

_SCORE_LAYER = re.compile(r"(aux_)?classifier(\.4|\.fc8|\.branches\.\d+(\.fc8)?|\.(low|high)_classifier)?")


def is_score_layer(name) -> bool:
    """Whether the conv module ``name`` (a model's, e.g. "classifier.4"; no ".weight") outputs class
    scores: v1 classifier.fc8, v2 classifier.branches.{i} (ResNet form) or classifier.branches.{i}.fc8,
    v3 classifier.4 and aux_classifier.4, v3plus classifier, lraspp classifier.low_classifier and
    classifier.high_classifier."""
    return _SCORE_LAYER.fullmatch(name) is not None

