"""The study's definition: one table, one schedule, one small backbone (how to run it: ``minideeplab.ablate``).

Every row is the "mini" ResNet (ResNet-50's widths / 4) with the quarter-wide heads of ``make_config``, trained by
``train.train`` with the same schedule (epochs, batch, crop, lr, seed), from scratch, so that the rows differ
in the head, the output stride (OS), the rates or the post-processing only. ``ROWS`` reads as the papers' table:

    shallow      the mini ResNet cut after layer1 (stride 4) + a 3x3 conv to the classes: a 27 px field of
                 view on 128 px images whose objects span 16 to 80 px (``ShallowFCN``)
    fcn          no atrous convolution anywhere: the ResNet at OS 32, one 3x3 conv to the classes (v2's
                 ResNet-form head with the single rate 1)
    v1           LargeFOV: fc6 3x3 at one large rate, fc7 1x1, fc8 1x1, fc6/fc7 256 wide (VGG-16's 1024 / 4), OS 8.
                 The real v1 is VGG-16, and ``make_config`` refuses v1 on a ResNet. VGG-16 LargeFOV costs 7.8 G
                 multiply-adds at 128x128 (the mini rows: 0.05-0.6 G) and has no batch norm, so from scratch it
                 would not train on this budget; and with another backbone the row would measure the backbone,
                 not LargeFOV's head. So this row is v2's VGG-form ASPP-L with one branch (fc6-fc7-fc8,
                 exactly LargeFOV's head) on the same mini ResNet: the honest stand-in.
    v2           ASPP-L at OS 8: per rate one 3x3 conv to the classes, the logits summed (the released
                 DeepLab-v2 ResNet-101 head)
    v3-osN       the v3 ASPP (1x1, three 3x3, image pooling) at OS 32, 16, 8; -nopool without image pooling
    v3plus-osN   v3+: the ASPP and the decoder on the stride-4 features
    *-crf        a row's trained weights evaluated with the dense CRF (``scratch.crf``): nothing is trained

Atrous rates. A 3x3 at rate r on an n x n map has its outer taps on the map only for pixels at least r from
the border; past r >= n every pixel's outer taps fall into the padding and the branch is a 1x1 conv. The papers'
513 px crops give a 33 x 33 map at OS 16 (65 x 65 at OS 8), where (6, 12, 18) keep 77, 57 and 40 % of their
taps on the map. Our 128 px images give 8 x 8 (OS 16) and 16 x 16 (OS 8): there the paper's (6, 12, 18) keep
25, 11 and 11 % (12 and 18 are pure 1x1 convs), and (12, 24, 36) at OS 8 the same. All rows but the two
``-paper-rates`` ones therefore use the paper's rates / 3: the same rates relative to the image (a quarter
would be exact, 513 / 128, but gives rate 1.5), the same field in pixels at OS 8 and 16 (rates doubled at
OS 8, as the paper's), and 69, 44 and 25 % of the taps on the map: (2, 4, 6) at OS 16, (4, 8, 12) at OS 8,
(1, 2, 3) at OS 32, ASPP-L's (6, 12, 18, 24) -> (2, 4, 6, 8), LargeFOV's 12 -> 4. ``v3-os16-paper-rates``
and ``v3-os8-paper-rates`` show what the paper's rates do here.

The schedule. The shipped study trains every row on 3,000 generated images (``python -m minideeplab.data.synthetic
--out runs/synthetic-3000 --seed 1 --train 3000 --val 0``: seed 1, so none is one of the committed images) for
``EPOCHS`` epochs (3,000 iterations of 8 crops), lr ``LR``, scales ``SCALE_RANGE``, and scores it on the committed
val split (``--val-root data/synthetic``). Measured on the mini v3+: on the 300 committed images, 60 epochs at
lr 0.01 reach a val mIoU of 0.20 and name almost no shape (the rows could not differ); on the 3,000 images at
lr 0.05 a 30-epoch run (the shipped model) scores 0.26, 0.42, 0.60 and 0.80 after 1,875, 3,750, 5,625 and 11,250
iterations. 3,000 iterations a row keep the study to about an hour here (the shipped one: 7,255 s of training
over the twelve trained rows, run two rows at a time on one thread each, 65 minutes of wall time); the rows
are compared at one budget, not trained to convergence, which favours what is quick to learn (notebook 09).

Each trained row lives in OUT/<name>/ (last.pt, result.json, per_image.npz: every val image's confusion
matrices). A row whose result.json exists is skipped; an interrupted one resumes from its last.pt (``train``'s
resumption: the same weights as an uninterrupted run). One OUT folder holds one schedule: a result.json from
another schedule is an error, not a silent mix. The table goes to RESULTS (default OUT): ablation.csv (one row
per configuration, ``columns`` order), ablation.json (the same records), ablation_miou.png, ablation_trimap.png
and ablation_per_image.npz (each row's per-image confusion matrices, ``read_per_image``: differences between
rows can be resampled by image). ``trends(rows)`` checks the course's claims (the papers' trends) against a
table and says, with the numbers, where they hold and where they do not.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from minideeplab.training.config import TrainConfig

__all__ = ["Row", "ROWS", "SGD_DEFAULTS", "Study", "EPOCHS", "BATCH_SIZE", "CROP_SIZE", "LR", "SCALE_RANGE", "SEED",
           "IMAGE_SIZE", "NARROW", "select", "ShallowConfig", "ShallowFCN", "costs", "field_of_view"]

EPOCHS = 8           # the shipped study: 8 x 375 = 3,000 iterations of 8 images on 3,000 generated train images
BATCH_SIZE = 8
CROP_SIZE = 128
LR = 0.05
SCALE_RANGE = (0.75, 1.5)
SEED = 0
IMAGE_SIZE = (128, 128)  # the synthetic set's: multiply-adds are counted at this size
NARROW = 2           # the trimap band (pixels) that ``trends`` calls "boundary accuracy"


class Row(NamedTuple):
    """One configuration. model: ``build_model``'s name ("v2", "v3", "v3plus") or "shallow" (``ShallowFCN``).
    atrous_rates: v2: ASPP-L's branches; v3, v3plus: the ASPP's 3x3 branches; () for shallow.
    image_pooling: the ASPP's image-level branch (None: the model has no ASPP). fc_channels: v2's fc6-fc7-fc8
    width (None: the ResNet form, one 3x3 conv per rate). crf: a ``scratch.crf.PARAMETER_SETS`` name; the row
    is row ``weights_of`` (trained once, for that row) evaluated with the dense CRF (post-processing).
    backbone: ``build_model``'s (the mini ResNet by default). seed: the row's own training seed (None: the
    run's), for the studies that repeat a configuration over seeds. crf_layer: the CRF trained as the model's
    last layer (``crf_study``). schedule: a name in its study's ``Study.schedules``, the training settings that
    replace the run's for this row (epochs, lr, the optimiser, the weights it starts from); None: the run's."""

    name: str
    model: str
    output_stride: int
    atrous_rates: tuple = ()
    image_pooling: bool | None = None
    fc_channels: int | None = None
    crf: str | None = None
    weights_of: str | None = None
    about: str = ""
    crf_layer: dict | None = None     # build_model's crf option: the CRF trained as the last layer
    seed: int | None = None           # None: the run's seed; the studies over seeds name each row's
    schedule: str | None = None       # a name in its study's schedules: this row's own settings; None: the run's
    backbone: str = "mini"

    @property
    def decoder(self) -> bool:
        return self.model == "v3plus"

    def model_options(self) -> dict:
        """build_model's options (TrainConfig.model_options) for this row."""
        if self.model == "shallow":
            return {}
        options = {"atrous_rates": tuple(self.atrous_rates)} if self.atrous_rates else {}
        if self.image_pooling is not None:
            options["image_pooling"] = self.image_pooling
        if self.fc_channels is not None:
            options["fc_channels"] = self.fc_channels
        if self.crf_layer is not None:
            options["crf"] = dict(self.crf_layer)
        return options


ROWS = (
    #   name                   model     OS  atrous_rates   image_pooling
    Row("shallow",             "shallow", 4, (),
        about="mini ResNet stem + layer1, a 3x3 conv to the classes: 27 px field of view"),
    Row("fcn",                 "v2",     32, (1,),
        about="no atrous convolution: OS 32, one 3x3 conv to the classes"),
    Row("v1",                  "v2",      8, (4,), fc_channels=256,
        about="LargeFOV head (fc6 3x3 rate 4, fc7, fc8; 256 wide) on the mini ResNet"),
    Row("v2",                  "v2",      8, (2, 4, 6, 8),
        about="ASPP-L: a 3x3 conv to the classes per rate, summed"),
    Row("v3-os32",             "v3",     32, (1, 2, 3),      True, about="ASPP + image pooling"),
    Row("v3-os16",             "v3",     16, (2, 4, 6),      True, about="ASPP + image pooling"),
    Row("v3-os8",              "v3",      8, (4, 8, 12),     True, about="ASPP + image pooling"),
    Row("v3-os16-nopool",      "v3",     16, (2, 4, 6),      False, about="ASPP without image pooling"),
    Row("v3-os16-paper-rates", "v3",     16, (6, 12, 18),    True,
        about="the paper's rates on the 8x8 map: 12 and 18 are 1x1 convs"),
    Row("v3-os8-paper-rates",  "v3",      8, (12, 24, 36),   True,
        about="the paper's rates on the 16x16 map: 24 and 36 are 1x1 convs"),
    Row("v3plus-os16",         "v3plus", 16, (2, 4, 6),      True, about="ASPP + decoder"),
    Row("v3plus-os8",          "v3plus",  8, (4, 8, 12),     True, about="ASPP + decoder"),
    Row("v3plus-os16-crf",     "v3plus", 16, (2, 4, 6),      True, crf="deeplab-v2-resnet", weights_of="v3plus-os16",
        about="v3plus-os16's weights + dense CRF (DeepLab v2 ResNet-101's parameters)"),
)
_BY_NAME = {r.name: r for r in ROWS}

SGD_DEFAULTS = {k: getattr(TrainConfig(), k) for k in ("optimizer", "weight_decay", "warmup_iters")}


class Study(NamedTuple):
    """A study: its rows and its schedule; its table is OUT/<name>.csv etc. ``studies.run_study`` runs it,
    ``minideeplab ablate --study NAME`` too; the three hooks are where a study differs from the ablation.
    schedules: name -> the settings a row naming it (``Row.schedule``) trains with instead of the run's: any of
    epochs, batch_size, crop_size, lr, scale_range, init_from (a checkpoint to start from), optimizer,
    weight_decay, warmup_iters (``run.row_schedule`` merges them)."""

    name: str
    rows: tuple
    epochs: int = EPOCHS
    lr: float = LR
    about: str = ""
    title: str = "DeepLab ablations on the synthetic set"  # its plots'
    runner: Callable | None = None  # (out, only, *, study, **options) -> records; None: run.run_ablation
    listing: Callable | None = None  # () -> the text of --list; None: results.format_rows(rows)
    report: Callable | None = None  # records -> the text after a run; None: results.format_table(records)
    schedules: Mapping[str, Mapping] = MappingProxyType({})  # name -> a row's own settings (Row.schedule)


def select(only=None, rows=ROWS) -> list[Row]:
    """The rows named in ``only`` (all when None), in table order; a CRF row brings the row whose weights it
    uses. Unknown names: ValueError listing the rows."""
    by_name = {r.name: r for r in rows}
    if only is None:
        return list(rows)
    only = [only] if isinstance(only, str) else list(only)
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ValueError(f"--only: unknown row {unknown[0]!r}; the rows are {', '.join(by_name)}")
    wanted = set(only) | {by_name[n].weights_of for n in only if by_name[n].weights_of}
    return [r for r in rows if r.name in wanted]


# ---------------------------------------------------------------------------------------------- models


class ShallowConfig(NamedTuple):
    """What ``predict`` and the table read off a model's config."""

    num_classes: int
    output_stride: int = 4
    name: str = "shallow"

    def describe(self) -> str:
        return f"shallow FCN (mini ResNet stem + layer1, output stride {self.output_stride})"


class ShallowFCN(nn.Module):
    """The small network with a small field of view: the mini ResNet's stem (7x7 stride 2, max pool stride 2)
    and layer1 (one bottleneck; 64 channels at stride 4, the v3+ decoder's ``low_level`` features), then one
    3x3 conv to the classes (with bias, N(0, 0.01) as DeepLab's score layers) and bilinear x4.
    x (N, 3, H, W) -> {"out": (N, classes, H, W)}. Field of view: 27 px (``field_of_view``).
    state_dict: backbone.conv1/bn1/layer1.* (the ResNet's names), classifier.weight/.bias."""

    def __init__(self, num_classes: int):
        super().__init__()
        from minideeplab.reference.backbone import ResNetBackbone
        from minideeplab.specs.backbone import ResNet
        from minideeplab.specs.deeplab import SCORE_STD

        self.config = ShallowConfig(int(num_classes))
        self.backbone = ResNetBackbone(ResNet("mini", 32))
        del self.backbone.layer2, self.backbone.layer3, self.backbone.layer4
        self.classifier = nn.Conv2d(self.backbone.spec.low_level_channels, num_classes, 3, padding=1)
        nn.init.normal_(self.classifier.weight, 0.0, SCORE_STD)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        b = self.backbone
        s = self.classifier(b.layer1(b.maxpool(F.relu(b.bn1(b.conv1(x))))))
        return {"out": F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def _meta_model(row: Row, num_classes: int) -> nn.Module:
    from minideeplab.reference.deeplab import build_model

    with torch.device("meta"):
        if row.model == "shallow":
            return ShallowFCN(num_classes).eval()
        return build_model(row.model, row.backbone, row.output_stride, num_classes, **row.model_options()).eval()


def costs(row: Row, num_classes: int = 7, size=IMAGE_SIZE) -> dict:
    """{"parameters", "mult_adds" (convolutions only, one (3, *size) image; ``bench.cost``)} of a row's model,
    counted on the meta device (no weights allocated)."""
    from minideeplab.bench.cost import model_mult_adds, mult_adds

    module = _meta_model(row, num_classes)
    if row.model == "shallow":
        macs = mult_adds(module, (1, 3, *size))
    else:  # a CRF layer's mean field is not counted (it cannot run on the meta device)
        options = {k: v for k, v in row.model_options().items() if k != "crf"}
        macs = model_mult_adds(row.model, row.backbone, row.output_stride, num_classes, size, **options)
    return {"parameters": sum(p.numel() for p in module.parameters()), "mult_adds": int(sum(macs.values()))}


def field_of_view(row: Row) -> int | None:
    """Theoretical receptive field of one output pixel along one axis, in input pixels: the convolutions and
    max pool on the longest path (each bottleneck's strided/dilated 3x3, the head's largest rate). Bilinear
    resizes are not counted, nor image pooling, which sees the whole image whatever this says. None for a row
    on another backbone than the mini ResNet (global attention sees the whole image)."""
    if row.backbone != "mini":
        return None
    from minideeplab.specs.backbone import ResNet
    from minideeplab.scratch.receptive import receptive_field

    spec = ResNet("mini", 32 if row.model == "shallow" else row.output_stride)
    stages = spec.stages[:1] if row.model == "shallow" else spec.stages
    layers = [(7, 2, 1), (3, 2, 1)] + [(3, b.stride, b.dilation) for stage in stages for b in stage]
    if row.model == "shallow":
        layers.append((3, 1, 1))
    else:
        layers.append((3, 1, max(row.atrous_rates)))  # v2's branch / fc6, the ASPP's largest 3x3
        if row.model == "v3":
            layers.append((3, 1, 1))                  # classifier.1
    size = receptive_field(layers).size
    if row.decoder:
        size += 2 * (3 - 1) * 4                        # the decoder's two 3x3 convs on the stride-4 map
    return size
