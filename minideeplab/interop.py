"""Interop with real PyTorch models: torchvision's and segmentation_models_pytorch's DeepLabs to the scratch
``DeepLab`` (weights and conventions), and the project's own reference twin either way.

    from_torchvision(module)   torchvision ``deeplabv3_resnet50`` / ``deeplabv3_resnet101`` /
                               ``deeplabv3_mobilenet_v3_large`` (aux head or not) or ``lraspp_mobilenet_v3_large``,
                               or its state_dict -> scratch DeepLab v3 / lraspp
    from_smp(module)           smp ``DeepLabV3Plus`` / ``DeepLabV3`` with a ResNet encoder, ``mobilenet_v2`` or
                               timm's aligned Xception (``tu-xception41/65/71``) -> scratch DeepLab v3plus /
                               v3 with ``decoder_layout="smp"``
    xception_from_timm(module) timm's ``xception41/65/71`` (or its state_dict) -> (Xception spec, params,
                               buffers) of the scratch backbone
    to_reference(model)        scratch DeepLab -> ``minideeplab.reference.deeplab.DeepLabModule``
    from_reference(module)     and back
    torchvision_config(m), smp_config(m)    the DeepLabConfig a model maps to, read from the model
    key_map(config, source)    our state_dict name -> the source's, for source "torchvision", "smp" or
                               "minideeplab"
    load_state_dict(config, state_dict, source)   a scratch DeepLab from a state_dict in the source's names;
                               a state_dict that does not fit is a ValueError naming the missing, unexpected
                               and mis-shaped keys

Conventions carried over (what the config records):

* torchvision: output stride 8 with torchvision's dilation convention (a dilated stage's block0 keeps
  the previous dilation), ASPP rates read from the module ((12, 24, 36)), image pooling last,
  align_corners False, the aux FCN head on layer3 when the state_dict has ``aux_classifier.*``
  (the scratch model computes it only when training; torchvision also in eval). MobileNetV3-Large:
  output stride 16 (``dilated=True``), the same names (``backbone.0`` .. ``backbone.16``), ASPP rates
  (12, 24, 36) (torchvision issue #7956), aux on features[4]; LR-ASPP's inter channels read from ``cbr``.
* smp: smp's dilation convention (every conv of a dilated stage gets stride 1 and the new dilation),
  the output stride of its encoder (8 or 16), rates read from the module (default (12, 24, 36) whatever
  the output stride), separable ASPP branches when smp's are (its v3+ default), align_corners True,
  decoder_layout "smp" (v3+: a separable 3x3 on the ASPP output before the upsampling, one separable 3x3
  after the concat; v3: torchvision's head structure, resized by a scale factor), and smp's input rule
  (H and W multiples of the output stride; other sizes are refused).

Dropout probabilities are read from the modules (they act only when training). The scratch model comes
back in the module's mode (train or eval), in the dtype of its weights (float32 or float64), like
``reference.deeplab.to_scratch``. torchvision and smp are needed only to build their models: nothing here
imports them at module level.

smp's ``tu-xception*`` encoders hand the decoder timm's stride-4 tap, the ReLU after TF DeepLab's (see
``minideeplab.specs.xception``): the scratch Xception they load into has ``low_level_tap="smp"``, that one.

Not supported (a ValueError says so): torchvision's FCN models, a MobileNetV3 of another width, smp encoders
other than its ResNets, ``mobilenet_v2`` and ``tu-xception41/65/71``, smp encoder_depth other than 5,
in_channels other than 3, an activation or a classification (aux_params) head, or an ``upsampling`` other
than smp's default.
"""

from __future__ import annotations

from collections.abc import Mapping

import re

import numpy as np
from torch import nn

from minideeplab.scratch import deeplab as scratch
from minideeplab.scratch import segformer, vit
from minideeplab.specs.backbone import RESNET_DEPTHS, ResNet
from minideeplab.specs.deeplab import DeepLabConfig
from minideeplab.specs.mobilenet import MobileNetV3
from minideeplab.specs.mobilenet_v2 import MobileNetV2
from minideeplab.specs.segformer import MiT, SegFormerConfig
from minideeplab.specs.vit import ViT
from minideeplab.specs.xception import XCEPTION_DEPTHS, Xception

__all__ = ["SOURCES", "torchvision_config", "smp_config", "key_map", "load_state_dict", "from_torchvision",
           "from_smp", "to_reference", "from_reference", "xception_from_timm", "timm_vit_spec", "from_timm",
           "segformer_from_smp"]

SOURCES = ("torchvision", "smp", "minideeplab")
_SHOW = 5  # keys named per kind in a mismatch message

# our prefix -> the source's, longest first wins (see key_map)
_PREFIXES = {
    ("smp", "v3"): {"backbone.": "encoder.", "classifier.0.": "decoder.aspp.", "classifier.1.": "decoder.conv.",
                    "classifier.2.": "decoder.bn.", "classifier.4.": "segmentation_head.0."},
    ("smp", "v3plus"): {"backbone.": "encoder.", "aspp.": "decoder.aspp.0.", "decoder.aspp_conv.0.": "decoder.aspp.1.",
                        "decoder.aspp_conv.1.": "decoder.aspp.2.", "decoder.low_level.": "decoder.block1.",
                        "decoder.fuse.0.": "decoder.block2.", "classifier.": "segmentation_head.0."},
}


# ---------------------------------------------------------------------------------------------
# state_dicts: names, fit, conversion


def _state(fn, source_obj):
    """(state_dict, module or None) from an nn.Module or a Mapping of tensors / arrays."""
    if isinstance(source_obj, Mapping):
        return dict(source_obj), None
    state_dict = getattr(source_obj, "state_dict", None)
    if not callable(state_dict):
        raise ValueError(f"{fn}: module must be a torch nn.Module or a state_dict (a mapping of tensors), "
                         f"got {type(source_obj).__name__}")
    return state_dict(), source_obj


def _shape(v) -> tuple:
    return tuple(int(s) for s in v.shape)


def key_map(config, source="minideeplab") -> dict[str, str]:
    """{our state_dict name: the source's name} for every parameter and buffer of ``config``'s model, in
    our order. source: "torchvision" (v3 with decoder_layout "paper", lraspp: the same names), "smp" (v3 or
    v3plus with decoder_layout "smp"), "minideeplab" (the reference twin: the same names)."""
    fn = "key_map"
    if not isinstance(config, DeepLabConfig):
        raise ValueError(f"{fn}: config must be a DeepLabConfig, got {type(config).__name__}")
    if source not in SOURCES:
        raise ValueError(f"{fn}: source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
    params, buffers = scratch.model_parameter_shapes(config)
    ours = list(params) + list(buffers)
    if source == "minideeplab":
        return {k: k for k in ours}
    if source == "torchvision":
        if config.name not in ("v3", "lraspp") or config.decoder_layout != "paper":
            raise ValueError(f"{fn}: torchvision's names are those of DeepLab v3 with decoder_layout 'paper' and "
                             f"of lraspp, got {config.name} with decoder_layout {config.decoder_layout!r}")
        return {k: k for k in ours}
    if config.name not in ("v3", "v3plus") or config.decoder_layout != "smp":
        raise ValueError(f"{fn}: smp's names are those of DeepLab v3 or v3plus with decoder_layout 'smp', "
                         f"got {config.name} with decoder_layout {config.decoder_layout!r}")
    table = sorted(_PREFIXES[("smp", config.name)].items(), key=lambda kv: -len(kv[0]))
    out = {}
    encoder = _SMP_ENCODER_KEYS.get(type(config.trunk), lambda k: k)
    for k in ours:
        ours_prefix, theirs = next((p, t) for p, t in table if k.startswith(p))
        rest = k[len(ours_prefix):]
        out[k] = theirs + (encoder(rest) if ours_prefix == "backbone." else rest)
    return out


# our backbone name -> the one below smp's "encoder." (ResNet: the same)
_SMP_ENCODER_KEYS = {
    # timm's feature wrapper flattens the top sequentials: stem.0 -> model.stem_0, blocks.3 -> model.blocks_3
    Xception: lambda k: "model." + re.sub(r"^(stem|blocks)\.(\d+)\.", r"\1_\2.", k),
}


def _listing(keys, describe=repr):
    keys = list(keys)
    shown = ", ".join(describe(k) for k in keys[:_SHOW])
    return shown + (f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _check_fit(fn, config, state, source, kmap):
    """ValueError naming the missing, unexpected and mis-shaped keys (the source's names), if any."""
    params, buffers = scratch.model_parameter_shapes(config)
    expected = {kmap[k]: shape for k, shape in (params | buffers).items()}
    _check_keys(fn, config.describe(), state, source, expected)


def _check_keys(fn, what, state, source, expected):
    """ValueError naming the keys of ``state`` that are missing, unexpected or mis-shaped against
    ``expected`` (name -> shape), if any."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [k for k in expected if k in state and _shape(state[k]) != expected[k]]
    if not (missing or unexpected or misshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if misshaped:
        parts.append(f"{len(misshaped)} mis-shaped: "
                     + _listing(misshaped, lambda k: f"{k!r} {_shape(state[k])}, expected {expected[k]}"))
    raise ValueError(f"{fn}: the state_dict does not fit {what} ({source} names, "
                     f"{len(expected)} keys expected): {'; '.join(parts)}")


def _to_numpy(v) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v.copy()
    return v.detach().cpu().numpy().copy()


def load_state_dict(config, state_dict, source="minideeplab", *, training=False, rng=None) -> scratch.DeepLab:
    """A scratch DeepLab of ``config`` holding copies of ``state_dict``'s weights (torch tensors or numpy
    arrays, named as ``source`` names them: see ``key_map``). Every key must be there, with its shape, and
    no other: otherwise a ValueError names the missing, unexpected and mis-shaped keys (the first few of
    each, with counts). Weights float32 or float64 (all alike); num_batches_tracked an integer.
    training: the model's mode; rng: its Generator (dropout masks), None: unseeded."""
    fn = "load_state_dict"
    if not isinstance(config, DeepLabConfig):
        raise ValueError(f"{fn}: config must be a DeepLabConfig, got {type(config).__name__}")
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{fn}: state_dict must be a mapping of name -> tensor or array, got "
                         f"{type(state_dict).__name__}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ValueError(f"{fn}: rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    kmap = key_map(config, source)
    for k, v in state_dict.items():
        if not hasattr(v, "shape") or not (isinstance(v, np.ndarray) or hasattr(v, "detach")):
            raise ValueError(f"{fn}: state_dict[{k!r}] must be a torch tensor or numpy array, got {type(v).__name__}")
    _check_fit(fn, config, state_dict, source, kmap)
    params_shapes, _ = scratch.model_parameter_shapes(config)
    arrays = {ours: _to_numpy(state_dict[theirs]) for ours, theirs in kmap.items()}
    floats = sorted({str(a.dtype) for k, a in arrays.items() if not k.endswith("num_batches_tracked")})
    if len(floats) != 1 or floats[0] not in ("float32", "float64"):
        raise ValueError(f"{fn}: the state_dict's weights must be all float32 or all float64, got {', '.join(floats)} "
                         f"(convert the module with .float() or .double())")
    for k, a in arrays.items():
        if k.endswith("num_batches_tracked") and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{fn}: state_dict[{kmap[k]!r}] has dtype {a.dtype}, expected an integer dtype")
    params = {k: a for k, a in arrays.items() if k in params_shapes}
    buffers = {k: a for k, a in arrays.items() if k not in params_shapes}
    return scratch.DeepLab(config, params, buffers, bool(training),
                           np.random.default_rng() if rng is None else rng)


# ---------------------------------------------------------------------------------------------
# reading a ResNet and an ASPP off a model


def _resnet_depth(fn, state, prefix):
    """The ResNet depth whose blocks per stage and block kind match the state_dict below ``prefix``."""
    counts = []
    for i in range(1, 5):
        stage = f"{prefix}layer{i}."
        idx = {int(k[len(stage):].split(".")[0]) for k in state if k.startswith(stage)}
        counts.append(max(idx) + 1 if idx else 0)
    block = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state else "basic"
    for depth, (kind, blocks) in RESNET_DEPTHS.items():
        if depth != "mini" and kind == block and tuple(counts) == blocks:
            return depth
    raise ValueError(f"{fn}: the state_dict's {prefix}layer1..4 have {tuple(counts)} {block} blocks, which is no "
                     f"ResNet (18, 34: basic (2, 2, 2, 2), (3, 4, 6, 3); 50, 101, 152: bottleneck (3, 4, 6, 3), "
                     f"(3, 4, 23, 3), (3, 8, 36, 3))")


def _output_stride(backbone) -> int:
    """4 x the strides of layer2..4's first blocks (their downsample conv, which every convention strides)."""
    os_ = 4
    for i in (2, 3, 4):
        ds = getattr(backbone, f"layer{i}")[0].downsample
        os_ *= ds[0].stride[0] if ds is not None else 1
    return os_


def _check_dilation(fn, backbone, spec, what, rename=None):
    """Every conv of the module strides and dilates as ``spec``'s conv_table says (``rename``: our conv
    name -> the module's)."""
    for name, (stride, dilation) in spec.conv_table().items():
        conv = backbone.get_submodule(rename(name) if rename else name)
        if (conv.stride[0], conv.dilation[0]) != (stride, dilation):
            raise ValueError(f"{fn}: {what}{name} has stride {conv.stride[0]} and dilation {conv.dilation[0]}, but "
                             f"{spec!r} expects stride {stride} and dilation {dilation}: an unsupported dilation "
                             f"layout")


def _aspp_rates(fn, aspp, separable):
    """The dilation of each 3x3 branch (``convs.1 .. convs.R``; the last conv is the image pooling)."""
    rates = []
    for branch in list(aspp.convs)[1:-1]:
        conv = branch[0][0] if separable else branch[0]
        rates.append(int(conv.dilation[0]))
    if not rates:
        raise ValueError(f"{fn}: the ASPP has no 3x3 branch")
    return tuple(rates)


def _dropout_p(seq, default=0.5):
    """The p of the first dropout in ``seq`` (the ASPP's projection), else ``default``."""
    return next((float(m.p) for m in seq if isinstance(m, nn.Dropout)), default)


# ---------------------------------------------------------------------------------------------
# torchvision


def torchvision_config(module) -> DeepLabConfig:
    """The DeepLabConfig of a torchvision ``deeplabv3_resnet50/101`` (or of its state_dict): depth from the
    blocks per stage, output stride 8 (for a module: read from its strides, and every conv's stride and
    dilation checked against torchvision's convention), num_classes from ``classifier.4``, aux if
    ``aux_classifier.*`` is there, ASPP rates and dropout read from the module ((12, 24, 36) and 0.5 for a
    state_dict), align_corners False. ``deeplabv3_mobilenet_v3_large`` / ``lraspp_mobilenet_v3_large`` (the
    key ``backbone.16.0.weight``): MobileNetV3-Large at output stride 16, v3 or lraspp by the head's keys."""
    fn = "torchvision_config"
    state, mod = _state(fn, module)
    kind = type(mod).__name__
    if mod is not None and not (kind in ("DeepLabV3", "LRASPP") and type(mod).__module__.startswith("torchvision.")):
        raise ValueError(f"{fn}: module must be torchvision's DeepLabV3 (deeplabv3_resnet50/101, "
                         f"deeplabv3_mobilenet_v3_large) or LRASPP (lraspp_mobilenet_v3_large), got "
                         f"{type(mod).__module__}.{kind}")
    if _MOBILENET_KEY in state:
        return _torchvision_mobilenet_config(fn, state, mod)
    if "backbone.layer4.0.conv1.weight" not in state:
        raise ValueError(f"{fn}: no ResNet backbone ('backbone.layer4.0.conv1.weight' missing) and no MobileNetV3 "
                         f"one ({_MOBILENET_KEY!r} missing)")
    if "classifier.0.convs.0.0.weight" not in state or "classifier.4.weight" not in state:
        raise ValueError(f"{fn}: no DeepLabHead ('classifier.0.convs.0.0.weight' and 'classifier.4.weight' "
                         f"expected): an FCN or a truncated state_dict?")
    depth = _resnet_depth(fn, state, "backbone.")
    num_classes = _shape(state["classifier.4.weight"])[0]
    aspp_channels = _shape(state["classifier.0.convs.0.0.weight"])[0]
    aux = any(k.startswith("aux_classifier.") for k in state)
    if mod is None:
        output_stride, rates, dropout = 8, (12, 24, 36), 0.5
        n_convs = len({k.split(".")[3] for k in state if k.startswith("classifier.0.convs.")})
        if n_convs != 5:
            raise ValueError(f"{fn}: the state_dict's ASPP has {n_convs} branches; torchvision's has 5 "
                             f"(rates 12, 24, 36): pass the module to read other rates")
    else:
        output_stride = _output_stride(mod.backbone)
        aspp = mod.classifier[0]
        rates = _aspp_rates(fn, aspp, separable=False)
        dropout = _dropout_p(aspp.project)
    spec = ResNet(depth, output_stride, "torchvision")
    if mod is not None:
        _check_dilation(fn, mod.backbone, spec, "backbone.")
    return DeepLabConfig("v3", spec, num_classes, atrous_rates=rates, aspp_channels=aspp_channels,
                         dropout=dropout, aux=aux, align_corners=False)


_MOBILENET_KEY = "backbone.16.0.weight"  # MobileNetV3's last conv (features[16])


def _torchvision_mobilenet_config(fn, state, mod) -> DeepLabConfig:
    """torchvision_config for ``deeplabv3_mobilenet_v3_large`` / ``lraspp_mobilenet_v3_large``: width 1,
    the output stride read from the module's convs (16 for a state_dict), every conv's stride and dilation
    checked."""
    output_stride = 16
    if mod is not None:
        try:
            output_stride = 16 if mod.backbone.get_submodule("13.block.1.0").dilation[0] == 2 else 32
        except AttributeError:
            raise ValueError(f"{fn}: the backbone is not MobileNetV3-Large's features (no 'backbone.13.block.1.0', "
                             f"its 13th block's depthwise conv)") from None
    spec = MobileNetV3(1.0, output_stride)
    if mod is not None:
        _check_dilation(fn, mod.backbone, spec, "backbone.")
    if "classifier.cbr.0.weight" in state:
        for k in ("classifier.scale.1.weight", "classifier.low_classifier.weight"):
            if k not in state:
                raise ValueError(f"{fn}: an LR-ASPP head without {k!r}: a truncated state_dict?")
        return DeepLabConfig("lraspp", spec, _shape(state["classifier.low_classifier.weight"])[0],
                             inter_channels=_shape(state["classifier.cbr.0.weight"])[0])
    if "classifier.0.convs.0.0.weight" not in state or "classifier.4.weight" not in state:
        raise ValueError(f"{fn}: neither a DeepLabHead ('classifier.0.convs.0.0.weight' and 'classifier.4.weight') "
                         f"nor an LR-ASPP head ('classifier.cbr.0.weight') on the MobileNetV3 backbone")
    rates, dropout = (12, 24, 36), 0.5
    if mod is not None:
        aspp = mod.classifier[0]
        rates, dropout = _aspp_rates(fn, aspp, separable=False), _dropout_p(aspp.project)
    return DeepLabConfig("v3", spec, _shape(state["classifier.4.weight"])[0], atrous_rates=rates,
                         aspp_channels=_shape(state["classifier.0.convs.0.0.weight"])[0], dropout=dropout,
                         aux=any(k.startswith("aux_classifier.") for k in state))


def from_torchvision(module, *, rng=None) -> scratch.DeepLab:
    """A scratch DeepLab with the weights and conventions of a torchvision ``deeplabv3_resnet50/101`` (v3),
    ``deeplabv3_mobilenet_v3_large`` (v3) or ``lraspp_mobilenet_v3_large`` (lraspp): an nn.Module, or its
    state_dict (then ResNet: output stride 8 and rates (12, 24, 36); MobileNetV3: output stride 16,
    torchvision's), in the module's mode (eval for a state_dict). See ``torchvision_config``."""
    fn = "from_torchvision"
    try:
        config = torchvision_config(module)
    except ValueError as e:
        raise ValueError(f"{fn}: {str(e).removeprefix('torchvision_config: ')}") from None
    state, mod = _state(fn, module)
    return _load(fn, config, state, "torchvision", mod, rng)


def _load(fn, config, state, source, mod, rng):
    try:
        return load_state_dict(config, state, source, training=bool(getattr(mod, "training", False)), rng=rng)
    except ValueError as e:
        raise ValueError(f"{fn}: {str(e).removeprefix('load_state_dict: ')}") from None


# ---------------------------------------------------------------------------------------------
# segmentation_models_pytorch


def smp_config(module) -> DeepLabConfig:
    """The DeepLabConfig of an smp ``DeepLabV3Plus`` or ``DeepLabV3`` with a ResNet encoder: depth from the
    blocks per stage, the encoder's output stride and smp's dilation convention (every conv checked),
    rates, separability, channels and dropout read from the decoder, num_classes from the segmentation
    head, align_corners True, decoder_layout "smp"."""
    fn = "smp_config"
    kind, where = type(module).__name__, type(module).__module__
    if kind not in ("DeepLabV3Plus", "DeepLabV3") or not where.startswith("segmentation_models_pytorch."):
        raise ValueError(f"{fn}: module must be smp's DeepLabV3Plus or DeepLabV3, got {where}.{kind}")
    enc = module.encoder
    kind_enc = type(enc).__name__
    timm_name = getattr(enc, "name", None) if kind_enc == "TimmUniversalEncoder" else None
    if kind_enc not in ("ResNetEncoder", "MobileNetV2Encoder") and timm_name not in _SMP_XCEPTIONS:
        raise ValueError(f"{fn}: only smp's ResNet encoders (resnet18/34/50/101/152), mobilenet_v2 and "
                         f"tu-xception41/65/71 are supported, got {kind_enc}" + (f" {timm_name!r}" if timm_name else ""))
    if getattr(enc, "_depth", 5) != 5:
        raise ValueError(f"{fn}: encoder_depth must be 5 (smp's default), got {enc._depth}")
    first = enc.features[0][0] if kind_enc == "MobileNetV2Encoder" else getattr(enc, "conv1", None)
    in_channels = enc._in_channels if timm_name else first.in_channels
    if in_channels != 3:
        raise ValueError(f"{fn}: in_channels must be 3 (RGB), got {in_channels}")
    if getattr(module, "classification_head", None) is not None:
        raise ValueError(f"{fn}: the classification head (aux_params) is not supported; build the model with "
                         f"aux_params=None")
    head = module.segmentation_head
    act = getattr(head[2], "activation", head[2])
    if type(act).__name__ != "Identity":
        raise ValueError(f"{fn}: the segmentation head's activation must be None (logits out), got "
                         f"{type(act).__name__}")
    if head[0].kernel_size != (1, 1):
        raise ValueError(f"{fn}: the segmentation head's conv must be 1x1, got {head[0].kernel_size}")
    output_stride = int(enc.output_stride)
    if timm_name:
        spec = Xception(_SMP_XCEPTIONS[timm_name], output_stride, low_level_tap="smp")
        _check_dilation(fn, enc, spec, "encoder.", _SMP_ENCODER_KEYS[Xception])
    elif kind_enc == "MobileNetV2Encoder":
        spec = MobileNetV2(output_stride)
        _check_dilation(fn, enc, spec, "encoder.")
    else:
        spec = ResNet(_resnet_depth(fn, module.state_dict(), "encoder."), output_stride, "smp")
        _check_dilation(fn, enc, spec, "encoder.")
    name = "v3plus" if kind == "DeepLabV3Plus" else "v3"
    aspp = module.decoder.aspp[0] if name == "v3plus" else module.decoder.aspp
    separable = not isinstance(aspp.convs[1][0], nn.Conv2d)  # smp's SeparableConv2d: depthwise, pointwise
    rates = _aspp_rates(fn, aspp, separable)
    channels = aspp.project[0].out_channels
    # the final upsampling: a scale factor with align_corners=True, to the input's size
    up = head[1]
    factor = getattr(up, "scale_factor", 1) or 1
    want = 4 if name == "v3plus" else output_stride
    if float(factor) != want or (want > 1 and not up.align_corners):
        raise ValueError(f"{fn}: the segmentation head must upsample x{want} with align_corners=True (smp's "
                         f"default upsampling), got scale_factor={factor}")
    options = dict(atrous_rates=rates, aspp_separable=separable, aspp_channels=channels,
                   dropout=_dropout_p(aspp.project), align_corners=True, decoder_layout="smp")
    if name == "v3plus":
        options.update(decoder_channels=module.decoder.block2[0][1].out_channels, decoder_separable=True,
                       low_level_channels=module.decoder.block1[0].out_channels)
    return DeepLabConfig(name, spec, head[0].out_channels, **options)


def from_smp(module, *, rng=None) -> scratch.DeepLab:
    """A scratch DeepLab (v3plus or v3, decoder_layout "smp") with the weights and conventions of an smp
    ``DeepLabV3Plus`` / ``DeepLabV3`` with a ResNet encoder, in the module's mode. See ``smp_config``.
    An smp ``Segformer`` gives a scratch ``SegFormer`` instead (``segformer_from_smp``).
    Its input rule is smp's: H and W multiples of the output stride."""
    fn = "from_smp"
    if type(module).__name__ == "Segformer":
        return segformer_from_smp(module)
    try:
        config = smp_config(module)
    except ValueError as e:
        raise ValueError(f"{fn}: {str(e).removeprefix('smp_config: ')}") from None
    return _load(fn, config, module.state_dict(), "smp", module, rng)


_SMP_XCEPTIONS = {f"xception{d}": d for d in XCEPTION_DEPTHS}  # smp's "tu-" encoders: timm's names


# ---------------------------------------------------------------------------------------------
# timm's aligned Xception


_TIMM_BLOCKS = {3 + 8 + 2: 41, 3 + 16 + 2: 65, 5 + 16 + 2: 71}  # blocks -> depth


def xception_from_timm(module, output_stride=None) -> tuple[Xception, dict, dict]:
    """(spec, params, buffers) of the scratch aligned Xception holding copies of a timm ``xception41/65/71``'s
    weights (an nn.Module from ``timm.create_model``, or its state_dict); the classifier ``head.fc`` is left
    out. The depth comes from the number of blocks; output_stride from the module's strides (every conv's
    stride and dilation checked against the spec's), or, for a state_dict, the argument (None: 16, DeepLab
    v3+'s); the low-level tap timm's ("smp"). Weights float32 or float64. A state_dict that does not fit is a
    ValueError naming its missing, unexpected and mis-shaped keys. Run it with ``minideeplab.scratch.backbone.backbone_forward`` / ``_infer``."""
    from minideeplab.scratch.backbone import parameter_shapes

    fn = "xception_from_timm"
    state, mod = _state(fn, module)
    if mod is not None and not (type(mod).__name__ == "XceptionAligned" and type(mod).__module__.startswith("timm.")):
        raise ValueError(f"{fn}: module must be timm's XceptionAligned (timm.create_model('xception65')) or its "
                         f"state_dict, got {type(mod).__module__}.{type(mod).__name__}")
    if output_stride is not None and output_stride not in (8, 16, 32):
        raise ValueError(f"{fn}: output_stride must be None, 8, 16 or 32, got {output_stride!r}")
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    n = max(blocks) + 1 if blocks else 0
    if n not in _TIMM_BLOCKS:
        raise ValueError(f"{fn}: the state_dict has {n} blocks (blocks.*), which is no aligned Xception (41: 13, "
                         f"65: 21, 71: 23 blocks)")
    if mod is not None:
        stride = 2 * np.prod([m.stride[0] for name, m in mod.blocks.named_modules()
                              if isinstance(m, nn.Conv2d) and name.endswith("conv3.conv_dw")])
        if output_stride is not None and output_stride != stride:
            raise ValueError(f"{fn}: output_stride={output_stride!r}, but the module's output stride is {stride} "
                             f"(timm.create_model(..., output_stride={output_stride}))")
        output_stride = int(stride)
    spec = Xception(_TIMM_BLOCKS[n], 16 if output_stride is None else output_stride, low_level_tap="smp")
    if mod is not None:
        _check_dilation(fn, mod, spec, "")
    shapes, buffer_shapes = parameter_shapes(spec)
    _check_keys(fn, repr(spec), state, "timm", shapes | buffer_shapes)
    params = {k: _to_numpy(state[k]) for k in shapes}
    buffers = {k: _to_numpy(state[k]) for k in buffer_shapes}
    floats = sorted({str(a.dtype) for a in params.values()} | {str(a.dtype) for k, a in buffers.items()
                                                               if not k.endswith("num_batches_tracked")})
    if len(floats) != 1 or floats[0] not in ("float32", "float64"):
        raise ValueError(f"{fn}: the weights must be all float32 or all float64, got {', '.join(floats)}")
    return spec, params, buffers


# ---------------------------------------------------------------------------------------------
# the project's reference twin


def to_reference(model):
    """The ``reference.deeplab.DeepLabModule`` of a scratch DeepLab, holding copies of its weights, in its
    dtype and mode (``reference.deeplab.to_torch``)."""
    from minideeplab.reference.deeplab import to_torch
    if not isinstance(model, scratch.DeepLab):
        raise ValueError(f"to_reference: model must be a scratch DeepLab, got {type(model).__name__}")
    return to_torch(model)


def from_reference(module, *, rng=None) -> scratch.DeepLab:
    """The scratch DeepLab of a ``reference.deeplab.DeepLabModule``, holding copies of its weights, in its
    dtype and mode (``reference.deeplab.to_scratch``)."""
    from minideeplab.reference.deeplab import DeepLabModule, to_scratch
    if not isinstance(module, DeepLabModule):
        raise ValueError(f"from_reference: module must be a minideeplab DeepLabModule, got {type(module).__name__}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ValueError(f"from_reference: rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    return to_scratch(module, rng)


# ---------------------------------------------------------------------------------------------
# timm's Vision Transformer


def timm_vit_spec(module):
    """The ViT spec of a timm ``VisionTransformer`` (read from the module: width, depth, heads, patch, MLP ratio,
    the img_size it was built for). Refuses what the scratch ViT does not have: no class token, register
    tokens, layer scale, a pre-norm, q/k norms, biasless qkv, a dynamic image size."""
    fn = "from_timm"
    if type(module).__name__ != "VisionTransformer" or not hasattr(module, "blocks"):
        raise ValueError(f"{fn}: module must be a timm VisionTransformer (e.g. timm.create_model("
                         f"'vit_tiny_patch16_224')), got {type(module).__name__}")
    block = module.blocks[0]
    unsupported = [what for what, bad in (
        ("no class token", getattr(module, "cls_token", None) is None),
        ("register tokens", getattr(module, "num_reg_tokens", 0) > 0),
        ("layer scale", not isinstance(getattr(block, "ls1", nn.Identity()), nn.Identity)),
        ("a pre-norm", not isinstance(getattr(module, "norm_pre", nn.Identity()), nn.Identity)),
        ("q/k norms", not isinstance(getattr(block.attn, "q_norm", nn.Identity()), nn.Identity)),
        ("a qkv without bias", block.attn.qkv.bias is None),
        ("a dynamic image size", getattr(module, "dynamic_img_size", False)),
        ("no position embeddings", getattr(module, "pos_embed", None) is None)) if bad]
    if unsupported:
        raise ValueError(f"{fn}: this VisionTransformer has {', '.join(unsupported)}; the scratch ViT is timm's "
                         "plain layout (vit_tiny/small/base_patch16_*)")
    D = int(module.embed_dim)
    patch = module.patch_embed.patch_size
    return ViT(embed_dim=D, depth=len(module.blocks), num_heads=int(block.attn.num_heads), patch_size=int(patch[0]),
               mlp_ratio=block.mlp.fc1.out_features / D,
               img_size=tuple(int(s) for s in module.patch_embed.img_size))


def from_timm(module):
    """A scratch ViT (``minideeplab.scratch.vit.ViTModel``) holding a timm VisionTransformer's weights:
    ``model(x)`` on an NCHW float32 array equals ``module.forward_features(x)`` (the tokens, class token first).
    The classifier (``head``, ``fc_norm``) is left out; a state_dict that does not fit names its keys."""
    spec = timm_vit_spec(module)
    state = {k: v for k, v in module.state_dict().items() if not k.startswith(("head.", "fc_norm."))}
    params, _ = vit.parameter_shapes(spec)
    _check_keys("from_timm", repr(spec), state, "timm", params)
    return vit.ViTModel(spec, {k: _to_numpy(state[k]).astype(np.float32) for k in params})


# ---------------------------------------------------------------------------------------------
# smp's SegFormer


def segformer_from_smp(module) -> segformer.SegFormer:
    """A scratch SegFormer (eval) holding an smp ``Segformer("mit_b0" | "mit_b1" | ...)``'s weights: its
    MiT widths, depths, heads and sr ratios are read from the module, and every key checked."""
    fn = "segformer_from_smp"
    enc = getattr(module, "encoder", None)
    if type(module).__name__ != "Segformer" or enc is None or not hasattr(enc, "block1"):
        raise ValueError(f"{fn}: module must be an smp Segformer with a MiT encoder, got {type(module).__name__}")
    stages = [getattr(enc, f"block{i}") for i in range(1, 5)]
    mit = MiT(widths=tuple(int(getattr(enc, f"norm{i}").weight.shape[0]) for i in range(1, 5)),
              depths=tuple(len(b) for b in stages), heads=tuple(int(b[0].attn.num_heads) for b in stages),
              sr_ratios=tuple(int(b[0].attn.sr_ratio) for b in stages),
              mlp_ratio=int(stages[0][0].mlp.fc1.out_features // stages[0][0].mlp.fc1.in_features))
    head = module.segmentation_head[0]
    config = SegFormerConfig(mit, num_classes=int(head.out_channels), decoder_channels=int(head.in_channels))
    state = {k: v for k, v in module.state_dict().items()}
    shapes, buffer_shapes = segformer.parameter_shapes(config)
    _check_keys(fn, repr(config), state, "smp", shapes | buffer_shapes)
    return segformer.SegFormer(config, {k: _to_numpy(state[k]) for k in shapes},
                               {k: _to_numpy(state[k]) for k in buffer_shapes})
