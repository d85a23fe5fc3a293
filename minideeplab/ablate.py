"""DeepLab's ablations, reproduced on the synthetic set: one table, one schedule, one small backbone.

    rows = run_ablation("runs/ablation", results="data/ablation")   # trains what is missing, writes the table
    rows = read_csv("data/ablation/ablation.csv")                   # the notebook: no retraining
    print(format_table(rows)); print("\\n".join(trends(rows)))

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

import csv
import json
import math
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minideeplab import train as T

__all__ = ["Row", "ROWS", "EPOCHS", "NARROW", "CLEARLY", "ShallowFCN", "select", "field_of_view", "costs",
           "run_ablation", "evaluate_crf", "per_image_confusions", "write_results", "read_csv", "read_per_image",
           "format_table", "format_rows", "trends", "columns", "mean_ious", "bootstrap_miou_difference",
           "bootstrap_interval", "pareto_front", "write_long_runs"]

EPOCHS = 8           # the shipped study: 8 x 375 = 3,000 iterations of 8 images on 3,000 generated train images
BATCH_SIZE = 8
CROP_SIZE = 128
LR = 0.05
SCALE_RANGE = (0.75, 1.5)
SEED = 0
IMAGE_SIZE = (128, 128)  # the synthetic set's: multiply-adds are counted at this size
NARROW = 2           # the trimap band (pixels) that ``trends`` calls "boundary accuracy"
CLEARLY = 10.0       # mIoU points: v3+ "beats the no-atrous baseline by at least 10"; the shallow net "clearly worse"


class Row(NamedTuple):
    """One configuration. model: ``build_model``'s name ("v2", "v3", "v3plus") or "shallow" (``ShallowFCN``).
    atrous_rates: v2: ASPP-L's branches; v3, v3plus: the ASPP's 3x3 branches; () for shallow.
    image_pooling: the ASPP's image-level branch (None: the model has no ASPP). fc_channels: v2's fc6-fc7-fc8
    width (None: the ResNet form, one 3x3 conv per rate). crf: a ``scratch.crf.PARAMETER_SETS`` name; the row
    is row ``weights_of`` (trained once, for that row) evaluated with the dense CRF."""

    name: str
    model: str
    output_stride: int
    atrous_rates: tuple = ()
    image_pooling: bool | None = None
    fc_channels: int | None = None
    crf: str | None = None
    weights_of: str | None = None
    about: str = ""

    @property
    def decoder(self) -> bool:
        return self.model == "v3plus"

    def model_options(self) -> dict:
        """build_model's options (TrainConfig.model_options) for this row."""
        if self.model == "shallow":
            return {}
        options = {"atrous_rates": tuple(self.atrous_rates)}
        if self.image_pooling is not None:
            options["image_pooling"] = self.image_pooling
        if self.fc_channels is not None:
            options["fc_channels"] = self.fc_channels
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
        from minideeplab.reference.aspp import _init
        from minideeplab.reference.backbone import ResNetBackbone
        from minideeplab.scratch.backbone import ResNet

        self.config = ShallowConfig(int(num_classes))
        self.backbone = ResNetBackbone(ResNet("mini", 32))
        del self.backbone.layer2, self.backbone.layer3, self.backbone.layer4
        self.classifier = nn.Conv2d(self.backbone.spec.low_level_channels, num_classes, 3, padding=1)
        _init(self.classifier, "classifier")

    def forward(self, x):
        b = self.backbone
        s = self.classifier(b.layer1(b.maxpool(F.relu(b.bn1(b.conv1(x))))))
        return {"out": F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=False)}


@contextmanager
def _shallow_buildable():
    """While open, ``train.build`` (which ``train.train`` and ``train.load_model`` call) builds ``ShallowFCN``
    for TrainConfig.model "shallow" and defers to the original for every other model. The trainer knows only
    ``build_model``'s family; this keeps the ablation's one extra model out of it."""
    original = T.build

    def build(config, num_classes, device=None):
        if config.model != "shallow":
            return original(config, num_classes, device)
        torch_dtype = getattr(torch, config.dtype)
        return ShallowFCN(num_classes).to(device=device or config.device, dtype=torch_dtype)

    T.build = build
    try:
        yield
    finally:
        T.build = original


def _meta_model(row: Row, num_classes: int) -> nn.Module:
    from minideeplab.reference.deeplab import build_model

    with torch.device("meta"):
        if row.model == "shallow":
            return ShallowFCN(num_classes).eval()
        return build_model(row.model, "mini", row.output_stride, num_classes, **row.model_options()).eval()


def costs(row: Row, num_classes: int = 7, size=IMAGE_SIZE) -> dict:
    """{"parameters", "mult_adds" (convolutions, one (3, *size) image; ``bench.cost``)} of a row's model,
    counted on the meta device (no weights allocated)."""
    from minideeplab.bench.cost import model_mult_adds, mult_adds

    module = _meta_model(row, num_classes)
    if row.model == "shallow":
        macs = mult_adds(module, (1, 3, *size))
    else:
        macs = model_mult_adds(row.model, "mini", row.output_stride, num_classes, size, **row.model_options())
    return {"parameters": sum(p.numel() for p in module.parameters()), "mult_adds": int(sum(macs.values()))}


def field_of_view(row: Row) -> int:
    """Theoretical receptive field of one output pixel along one axis, in input pixels: the convolutions and
    max pool on the longest path (each bottleneck's strided/dilated 3x3, the head's largest rate). Bilinear
    resizes are not counted, nor image pooling, which sees the whole image whatever this says."""
    from minideeplab.scratch.backbone import ResNet
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


# ---------------------------------------------------------------------------------------------- running


def _schedule(epochs, train_images, val_images, crop_size, batch_size, lr, seed, scale_range=SCALE_RANGE) -> dict:
    return {"epochs": epochs, "train_images": train_images, "val_images": val_images, "crop_size": crop_size,
            "batch_size": batch_size, "lr": lr, "seed": seed, "scale_min": float(scale_range[0]),
            "scale_max": float(scale_range[1])}


def _inference_ms(run, images, threads) -> float:
    """Median milliseconds of run(image) over ``images`` after one warm-up call, on ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run(images[0])
        times = []
        for image in images:
            tic = time.perf_counter()
            run(image)
            times.append(time.perf_counter() - tic)
    finally:
        torch.set_num_threads(before)
    return 1000 * statistics.median(times)


def _crf_refine(params):
    from minideeplab.scratch.crf import PARAMETER_SETS, dense_crf

    if isinstance(params, str):
        if params not in PARAMETER_SETS:
            raise ValueError(f"crf must be one of {', '.join(map(repr, PARAMETER_SETS))}, got {params!r}")
        params = PARAMETER_SETS[params]

    def refine(probs, image):
        return dense_crf(probs / probs.sum(0, keepdims=True), image, **params)
    return refine


def per_image_confusions(model, dataset, num_classes, crf=None, widths=T.TRIMAP_WIDTHS):
    """Each image's confusion matrix and trimap confusions, single scale, no flip, as ``train.evaluate`` scores
    them (crf: refine the probabilities with the dense CRF first, a PARAMETER_SETS name or a dict of dense_crf's
    arguments) -> (cms (N, C, C) int64, trimaps (N, len(widths), C, C) int64). Their sums over the images are
    ``train.evaluate``'s matrices; kept per image so that differences between rows can be resampled by image."""
    from minideeplab.data.transforms import IGNORE_INDEX
    from minideeplab.metrics import confusion_matrix, trimap_confusion

    refine, C, N = (_crf_refine(crf) if crf is not None else None), num_classes, len(dataset)
    cms = np.zeros((N, C, C), np.int64)
    trimaps = np.zeros((N, len(widths), C, C), np.int64)
    for i in range(N):
        image, label = dataset[i]
        probs = T.predict(model, image)
        pred = (refine(probs.numpy(), image) if refine else probs.numpy()).argmax(0)
        cms[i] = confusion_matrix(pred, label, C, IGNORE_INDEX)
        trimaps[i] = trimap_confusion(pred, label, widths, C, IGNORE_INDEX)
    return cms, trimaps


def evaluate_crf(model, dataset, classes, crf="deeplab-v2-resnet", widths=T.TRIMAP_WIDTHS) -> dict:
    """``train.evaluate`` (one scale, no flip) with each image's probabilities refined by the dense CRF
    (``scratch.crf.dense_crf``; crf: a PARAMETER_SETS name or a dict of its arguments, n_iters included)."""
    cms, trimaps = per_image_confusions(model, dataset, len(classes), crf, widths)
    return T._scores(cms.sum(0), trimaps.sum(0), classes, widths, len(dataset))


def _train_seconds(metrics, batch_size) -> float:
    """Training time from the checkpoint's per-epoch speeds (a resumed row counts its earlier epochs too)."""
    seconds, it = 0.0, 0
    for r in metrics:
        seconds += (r["iteration"] - it) * batch_size / r["images_per_s"]
        it = r["iteration"]
    return seconds


def _record(row, classes, scores, cost, schedule, train_seconds, images, inference_ms, threads, final_loss):
    record = {"name": row.name, "model": row.model, "backbone": "mini", "output_stride": row.output_stride,
              "atrous_rates": tuple(row.atrous_rates), "image_pooling": row.image_pooling, "decoder": row.decoder,
              "crf": row.crf, "field_of_view": field_of_view(row), **cost,
              "miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"],
              "mean_accuracy": scores["mean_accuracy"]}
    record.update({f"trimap_{w}": a for w, a in scores["trimap_accuracy"].items()})
    record.update({f"iou_{c}": scores["per_class_iou"][c] for c in classes})
    speed = images / train_seconds if train_seconds else math.nan
    record.update({"train_seconds": train_seconds, "images_per_s": speed,
                   "inference_ms": inference_ms, "threads": threads, "final_loss": final_loss, **schedule,
                   "about": row.about})
    return record


def _check_schedule(path, record, schedule):
    differ = {k: (record.get(k), v) for k, v in schedule.items() if record.get(k) != v}
    if differ:
        what = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in differ.items())
        raise ValueError(f"{path} was measured with {what}: one --out folder holds one schedule; use another "
                         f"--out, or delete {path.parent} to measure the row again")


def _load_result(path, schedule):
    record = json.loads(path.read_text())
    record["atrous_rates"] = tuple(record["atrous_rates"])
    record = {k: math.nan if v is None and k not in ("image_pooling", "crf") else v for k, v in record.items()}
    _check_schedule(path, record, schedule)
    return record


def _run_row(row, out, schedule, data_root, val_set, classes, threads, timing_images, log) -> dict:
    folder = out / row.name
    result = folder / "result.json"
    if result.exists():
        record = _load_result(result, schedule)
        log(f"{row.name}: measured earlier ({result}), skipped")
        return record
    source = out / (row.weights_of or row.name)
    checkpoint = source / "last.pt"
    if row.weights_of is None:
        config = T.TrainConfig(model=row.model, backbone="mini",
                               output_stride=None if row.model == "shallow" else row.output_stride,
                               data_root=str(data_root), out=str(folder), epochs=schedule["epochs"],
                               batch_size=schedule["batch_size"], crop_size=schedule["crop_size"], lr=schedule["lr"],
                               scale_range=(schedule["scale_min"], schedule["scale_max"]), seed=schedule["seed"],
                               eval_every=0, train_images=schedule["train_images"], model_options=row.model_options())
        resume = checkpoint.exists()
        n = schedule["epochs"]
        log(f"{row.name}: {'resuming' if resume else 'training'} ({row.about}; {n} epoch{'s' * (n != 1)})")
        try:
            with _shallow_buildable():
                T.train(config, resume=resume, quiet=True, log=lambda line: log(f"  {row.name}: {line}"))
        except ValueError as e:
            hint = f" (or delete {folder} to train it afresh)" if resume else ""
            raise ValueError(f"row {row.name}: {e}{hint}") from None
    elif not checkpoint.exists():
        raise FileNotFoundError(f"row {row.name} evaluates the weights of row {row.weights_of}, but {checkpoint} "
                                f"does not exist: run row {row.weights_of} first")
    ckpt = T.load_checkpoint(checkpoint)
    if ckpt["iteration"] != schedule["epochs"] * (schedule["train_images"] // schedule["batch_size"]):
        raise ValueError(f"row {row.name}: {checkpoint} is at iteration {ckpt['iteration']}, not the end of "
                         f"{schedule['epochs']} epochs: run row {row.weights_of or row.name} to the end first")
    with _shallow_buildable():
        model, ckpt_classes = T.load_model(checkpoint)
    if ckpt_classes != classes:
        raise ValueError(f"{checkpoint} was trained on classes {ckpt_classes}, the data root has {classes}")
    log(f"{row.name}: evaluating on {len(val_set)} val images" + (f" with the dense CRF ({row.crf})" * bool(row.crf)))
    cms, trimaps = per_image_confusions(model, val_set, len(classes), row.crf)
    scores = T._scores(cms.sum(0), trimaps.sum(0), classes, T.TRIMAP_WIDTHS, len(val_set))
    if row.crf:
        refine = _crf_refine(row.crf)
        run = lambda image: refine(T.predict(model, image).numpy(), image)  # noqa: E731
    else:
        run = lambda image: T.predict(model, image)  # noqa: E731
    images = [val_set[i][0] for i in range(min(timing_images, len(val_set)))]
    ms = _inference_ms(run, images, threads)
    seconds = _train_seconds(ckpt["metrics"], schedule["batch_size"])
    record = _record(row, classes, scores, costs(row, len(classes)), schedule, seconds,
                     ckpt["iteration"] * schedule["batch_size"], ms, threads, ckpt["metrics"][-1]["loss"])
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "per_image.npz", cms=cms, trimaps=trimaps, widths=np.asarray(T.TRIMAP_WIDTHS))
    tmp = result.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(record), indent=1))
    tmp.replace(result)
    log(f"{row.name}: mIoU {100 * record['miou']:.1f}  trimap@{NARROW}px {100 * record[f'trimap_{NARROW}']:.1f}  "
        f"trained {seconds:.0f} s  {ms:.1f} ms/image")
    return record


def run_ablation(out="runs/ablation", only=None, *, epochs=EPOCHS, train_images=None, val_images=None,
                 crop_size=CROP_SIZE, batch_size=BATCH_SIZE, lr=LR, seed=SEED, scale_range=SCALE_RANGE,
                 data_root="data/synthetic", val_root=None, results=None, threads=1, timing_images=5,
                 log=print) -> list[dict]:
    """Train and measure the rows named in ``only`` (all of ``ROWS`` when None) that OUT does not hold yet,
    then write the table of every row OUT holds (in ``ROWS`` order) to RESULTS (default OUT): ablation.csv,
    ablation.json, ablation_miou.png, ablation_trimap.png. Rows train on data_root's train split and are scored
    on val_root's val split (val_root None: data_root's). train_images / val_images: the first N (None: all).
    threads: torch threads for the inference timing (the same for every row). Returns the table's records."""
    out = Path(out)
    only = [only] if isinstance(only, str) else (None if only is None else list(only))
    rows = select(only)
    if only is not None:
        for r in rows:
            if r.weights_of and r.weights_of not in only:
                log(f"{r.weights_of}: added ({r.name} evaluates its weights)")
    train_set = T.FirstN(T.open_split(data_root, "train"), train_images)
    classes = list(train_set.dataset.classes)
    val_set = T.FirstN(T.open_val(T.TrainConfig(data_root=str(data_root), val_root=val_root), classes), val_images)
    T.TrainConfig(epochs=epochs, batch_size=batch_size, crop_size=crop_size, lr=lr, seed=seed,
                  scale_range=scale_range)  # its errors, early
    schedule = _schedule(epochs, len(train_set), len(val_set), crop_size, batch_size, lr, seed, scale_range)
    if batch_size > len(train_set):
        raise ValueError(f"batch size {batch_size} is larger than the {len(train_set)} training images")
    if not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    for k, row in enumerate(rows, start=1):
        log(f"[{k}/{len(rows)}] {row.name}")
        _run_row(row, out, schedule, data_root, val_set, classes, threads, timing_images, log)
    table = [_load_result(out / r.name / "result.json", schedule) for r in ROWS
             if (out / r.name / "result.json").exists()]
    per_image = {r["name"]: dict(np.load(out / r["name"] / "per_image.npz")) for r in table
                 if (out / r["name"] / "per_image.npz").exists()}
    write_results(table, out if results is None else results, per_image)
    return table


def write_long_runs(checkpoints: dict, path) -> Path:
    """Summarise training runs for the table's supplement: checkpoints maps a row name to (about, checkpoint
    path); writes {name: {"about", "config", "metrics": [{"epoch", "iteration", "miou", "pixel_accuracy",
    "trimap_accuracy"} of each evaluation]}} as JSON (nan as null) to path."""
    out = {}
    for name, (about, checkpoint) in checkpoints.items():
        ckpt = T.load_checkpoint(checkpoint)
        keep = ("epoch", "iteration", "miou", "pixel_accuracy", "trimap_accuracy")
        out[name] = {"about": about, "config": ckpt["config"],
                     "metrics": [{k: r[k] for k in keep} for r in ckpt["metrics"] if "miou" in r]}
    path = Path(path)
    path.write_text(json.dumps(_json_safe(out), indent=1))
    return path


# ---------------------------------------------------------------------------------------------- the table


_FIRST = ["name", "model", "backbone", "output_stride", "atrous_rates", "image_pooling", "decoder", "crf",
          "field_of_view", "parameters", "mult_adds", "miou", "pixel_accuracy", "mean_accuracy"]
_LAST = ["train_seconds", "images_per_s", "inference_ms", "threads", "final_loss", "epochs", "train_images",
         "val_images", "crop_size", "batch_size", "lr", "scale_min", "scale_max", "seed", "about"]
_INTS = {"output_stride", "field_of_view", "parameters", "mult_adds", "threads", "epochs", "train_images",
         "val_images", "crop_size", "batch_size", "seed"}


def columns(rows) -> list[str]:
    """The CSV's columns: _FIRST, trimap_<width> (increasing), iou_<class> (the data's order), _LAST."""
    keys = list(rows[0]) if rows else []
    trimap = sorted((k for k in keys if k.startswith("trimap_")), key=lambda k: float(k[len("trimap_"):]))
    return _FIRST + trimap + [k for k in keys if k.startswith("iou_")] + _LAST


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def _csv_cell(key, v):
    if key == "atrous_rates":
        return " ".join(str(r) for r in v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(v) if isinstance(v, float) else str(v)


def write_results(rows, folder, per_image=None) -> list[Path]:
    """ablation.csv, ablation.json and the two plots in ``folder``, and ablation_per_image.npz when per_image
    (row name -> {"cms", "trimaps", "widths"} of ``per_image_confusions``) holds every row (else an earlier one
    is removed); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = columns(rows)
    with open(folder / "ablation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for r in rows:
            w.writerow([_csv_cell(k, r.get(k)) for k in names])
    (folder / "ablation.json").write_text(json.dumps(_json_safe([{k: r.get(k) for k in names} for r in rows]),
                                                     indent=1))
    paths = [folder / "ablation.csv", folder / "ablation.json"]
    if rows:
        paths += [plot_miou(rows, folder / "ablation_miou.png"), plot_trimap(rows, folder / "ablation_trimap.png")]
    if rows and per_image and all(r["name"] in per_image for r in rows):
        first = per_image[rows[0]["name"]]
        np.savez_compressed(folder / "ablation_per_image.npz", names=np.array([r["name"] for r in rows]),
                            widths=first["widths"],
                            cms=np.stack([per_image[r["name"]]["cms"] for r in rows]).astype(np.int32),
                            trimaps=np.stack([per_image[r["name"]]["trimaps"] for r in rows]).astype(np.int32))
        paths.append(folder / "ablation_per_image.npz")
    else:  # a file from an earlier table would no longer match this one
        (folder / "ablation_per_image.npz").unlink(missing_ok=True)
    return paths


def read_per_image(path) -> dict:
    """ablation_per_image.npz -> {row name: {"cms": (N, C, C), "trimaps": (N, len(widths), C, C)}} (int64, one
    matrix per val image, in the val split's order) and {"widths": ...} under the key "widths"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_per_image: {path} does not exist (write it with 'minideeplab ablate')")
    with np.load(path) as z:
        out = {str(n): {"cms": z["cms"][k].astype(np.int64), "trimaps": z["trimaps"][k].astype(np.int64)}
               for k, n in enumerate(z["names"])}
        out["widths"] = z["widths"].tolist()
    return out


def read_csv(path) -> list[dict]:
    """The records of an ablation.csv, typed as ``run_ablation`` returns them (ints, floats with nan for empty
    cells, atrous_rates a tuple, image_pooling True/False/None, crf a name or None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_csv: {path} does not exist (write it with 'minideeplab ablate')")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in ("name", "miou", "atrous_rates") if k not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"read_csv: {path} is not an ablation table (no column {missing[0]!r})")
        rows = []
        for raw in reader:
            r = {}
            for k, v in raw.items():
                if k == "atrous_rates":
                    r[k] = tuple(int(x) for x in v.split())
                elif k in ("name", "model", "backbone", "about"):
                    r[k] = v
                elif k == "crf":
                    r[k] = v or None
                elif k in ("image_pooling", "decoder"):
                    r[k] = {"True": True, "False": False, "": None}[v]
                elif k in _INTS:
                    r[k] = int(v)
                else:
                    r[k] = float(v) if v else math.nan
            rows.append(r)
    return rows


def _pct(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def format_table(rows) -> str:
    """The table as aligned text: configuration, cost, mIoU and trimap accuracy (%), time."""
    widths = sorted(float(k[len("trimap_"):]) for k in (rows[0] if rows else {}) if k.startswith("trimap_"))
    tri = [f"{w:g}" for w in widths]
    head = ["name", "model", "OS", "rates", "pool", "dec", "crf", "FOV", "params", "MACs", "mIoU"] + \
           [f"tri{w}" for w in tri] + ["train s", "img/s", "ms/img"]
    lines = []
    for r in rows:
        pool = {True: "yes", False: "no", None: "-"}[r["image_pooling"]]
        lines.append([r["name"], r["model"], str(r["output_stride"]), ",".join(map(str, r["atrous_rates"])) or "-",
                      pool, "yes" if r["decoder"] else "no", "yes" if r["crf"] else "no", str(r["field_of_view"]),
                      f"{r['parameters'] / 1e6:.2f}M", f"{r['mult_adds'] / 1e9:.3f}G", _pct(r["miou"])] +
                     [_pct(r[f"trimap_{w}"]) for w in tri] +
                     [f"{r['train_seconds']:.0f}", f"{r['images_per_s']:.1f}", f"{r['inference_ms']:.1f}"])
    cols = list(zip(head, *lines))
    size = [max(len(c) for c in col) for col in cols]
    left = {"name", "model", "rates", "pool", "dec", "crf"}
    fmt = lambda cells: "  ".join(c.ljust(n) if h in left else c.rjust(n)  # noqa: E731
                                  for c, n, h in zip(cells, size, head)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * n for n in size])] + [fmt(line) for line in lines])


def format_rows(rows=ROWS, num_classes=7) -> str:
    """The configurations (``--list``): name, model, OS, rates, pooling, decoder, CRF, field of view,
    parameters and multiply-adds at 128x128, and what the row is."""
    lines = []
    for r in rows:
        c = costs(r, num_classes)
        pool = {True: "yes", False: "no", None: "-"}[r.image_pooling]
        lines.append([r.name, r.model, str(r.output_stride), ",".join(map(str, r.atrous_rates)) or "-", pool,
                      "yes" if r.decoder else "no", r.crf or "-", f"{field_of_view(r)}",
                      f"{c['parameters'] / 1e6:.2f}M", f"{c['mult_adds'] / 1e9:.3f}G", r.about])
    head = ["name", "model", "OS", "rates", "pool", "dec", "crf", "FOV px", "params", "MACs", "what"]
    size = [max(len(x) for x in col) for col in zip(head, *lines)]
    right = {"OS", "FOV px", "params", "MACs"}
    fmt = lambda cells: "  ".join(c.rjust(n) if h in right else c.ljust(n)  # noqa: E731
                                  for c, n, h in zip(cells, size, head)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * n for n in size])] + [fmt(line) for line in lines])


def _label_colour(name):
    import matplotlib.pyplot as plt

    family = ["shallow", "fcn", "v1", "v2", "v3", "v3plus"]
    base = name.split("-")[0]
    return plt.get_cmap("tab10")(family.index(base) if base in family else 9)


def plot_miou(rows, path) -> Path:
    """A horizontal bar per row: mIoU (%), coloured by model family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    names = [r["name"] for r in rows]
    values = [100 * r["miou"] for r in rows]
    ax.barh(range(len(rows)), values, color=[_label_colour(n) for n in names])
    for i, v in enumerate(values):
        ax.text(v + 0.5, i, f"{v:.1f}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlabel("mIoU (%), val")
    ax.set_xlim(0, max(100.0, max(values) + 8))
    ax.set_title(f"DeepLab ablations on the synthetic set ({rows[0]['epochs']} epochs each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_trimap(rows, path) -> Path:
    """Trimap accuracy (%) against the band width around the boundaries, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted((k for k in rows[0] if k.startswith("trimap_")), key=lambda k: float(k[len("trimap_"):]))
    widths = [float(k[len("trimap_"):]) for k in keys]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = ["-", "--", ":", "-."]
    seen = {}
    for r in rows:
        base = r["name"].split("-")[0]
        seen[base] = seen.get(base, -1) + 1
        ax.plot(widths, [100 * r[k] for k in keys], styles[seen[base] % 4], marker="o", ms=3,
                color=_label_colour(r["name"]), label=r["name"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [f"{w:g}" for w in widths])
    ax.set_xlabel("band width around the object boundaries (pixels)")
    ax.set_ylabel("pixel accuracy in the band (%)")
    ax.set_title("Trimap accuracy: how well each row places the boundaries")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------- trends


def mean_ious(cms, samples) -> np.ndarray:
    """cms (N, C, C) per-image confusion matrices, samples (B, M) image indices (repeats count) -> (B,) float64:
    the mIoU of each sample's summed matrix (classes absent from a whole sample left out of its mean)."""
    cm = np.asarray(cms, dtype=np.int64)[np.asarray(samples, dtype=np.int64)].sum(1)
    inter = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (cm.sum(-1) + cm.sum(-2) - inter)
        return np.nanmean(iou, axis=-1)


def bootstrap_miou_difference(cms_a, cms_b, samples) -> np.ndarray:
    """The paired bootstrap of an mIoU difference (exercise 9.1): for each row of samples, (B, N) indices of
    images drawn with replacement, mIoU(a) - mIoU(b) on those images -> (B,) float64."""
    return mean_ious(cms_a, samples) - mean_ious(cms_b, samples)


def bootstrap_interval(cms_a, cms_b, n_samples=2000, level=0.95, seed=0) -> tuple[float, float, float]:
    """(mIoU(a) - mIoU(b) on all images, and the percentile interval of level of its paired bootstrap): the
    val images resampled with replacement n_samples times, the same images for both rows. It measures the luck of
    the val images, not that of the training run (one seed per row)."""
    a, b = np.asarray(cms_a), np.asarray(cms_b)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"bootstrap_interval: cms_a and cms_b must both be (N, C, C), got {a.shape} and {b.shape}")
    n = len(a)
    samples = np.random.default_rng(seed).integers(0, n, (n_samples, n))
    diffs = bootstrap_miou_difference(a, b, samples)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    whole = float(bootstrap_miou_difference(a, b, np.arange(n)[None])[0])
    return whole, float(lo), float(hi)


def pareto_front(cost, score) -> np.ndarray:
    """(n,) bool: the rows that no other row dominates, i.e. no row costs no more and scores no less while being
    strictly better in one (exercise 9.2). Identical rows do not dominate each other."""
    c, s = np.asarray(cost, dtype=np.float64), np.asarray(score, dtype=np.float64)
    if c.shape != s.shape or c.ndim != 1:
        raise ValueError(f"pareto_front: cost and score must be 1-D of one length, got {c.shape} and {s.shape}")
    no_worse = (c[None, :] <= c[:, None]) & (s[None, :] >= s[:, None])
    better = (c[None, :] < c[:, None]) | (s[None, :] > s[:, None])
    return ~(no_worse & better).any(axis=1)


def trends(rows, width=NARROW) -> list[str]:
    """The course's claims checked against a table (records as ``read_csv`` or ``run_ablation`` return them),
    one plain statement each, with its numbers and "holds" / "does not hold" (or "not measured" when a row is
    missing). mIoU and trimap accuracy in points (%); boundary accuracy is the trimap accuracy within
    ``width`` pixels of a boundary."""
    by = {r["name"]: r for r in rows}
    tri = f"trimap_{width:g}"
    out = []

    def have(*names):
        missing = [n for n in names if n not in by]
        return not missing, f"not measured: needs row{'s' if len(missing) > 1 else ''} {', '.join(missing)}"

    def pts(name, key="miou"):
        return 100 * by[name][key]

    def verdict(ok):
        return "holds" if ok else "does not hold"

    def beats(a, b, key, what, threshold=None, claim=""):
        ok, why = have(a, b)
        if not ok:
            return f"{a} vs {b}, {what}: {why}"
        d = pts(a, key) - pts(b, key)
        need = (d >= threshold) if threshold is not None else d > 0
        return (f"{a} {'beats' if d >= 0 else 'trails'} {b} by {abs(d):.1f} {what} points ({pts(a, key):.1f} vs "
                f"{pts(b, key):.1f}; {claim}: {verdict(need)})")

    def ordered(names, key, what, claim):
        ok, why = have(*names)
        if not ok:
            return f"{claim}: {why}"
        values = [pts(n, key) for n in names]
        fails = [f"{names[i + 1]} {values[i + 1]:.1f} >= {names[i]} {values[i]:.1f}"
                 for i in range(len(names) - 1) if not values[i] > values[i + 1]]
        listing = ", ".join(f"{n} {v:.1f}" for n, v in zip(names, values))
        return f"{what}: {listing} ({claim}: {verdict(not fails)}{'; not where ' + '; '.join(fails) if fails else ''})"

    out.append(beats("v3plus-os16", "fcn", "miou", "mIoU", CLEARLY, f"the course asks >= {CLEARLY:g}"))
    out.append(ordered(["v3-os8", "v3-os16", "v3-os32"], tri,
                       f"output stride (v3), trimap accuracy at {width:g} px",
                       "a smaller output stride places boundaries better"))
    out.append(beats("v3plus-os8", "v3plus-os16", tri, f"trimap-{width:g}px",
                     claim="output stride 8 beats 16 at the boundaries (v3+)"))
    out.append(ordered(["v3-os8", "v3-os16", "v3-os32"], "miou", "output stride (v3), mIoU",
                       "a smaller output stride scores higher"))
    out.append(beats("v3plus-os16", "v3-os16", tri, f"trimap-{width:g}px",
                     claim="the decoder improves boundary accuracy"))
    out.append(beats("v3plus-os16", "v3-os16", "miou", "mIoU", claim="the decoder improves mIoU"))
    out.append(beats("v3-os16", "v3-os16-nopool", "miou", "mIoU", claim="image pooling helps"))
    out.append(beats("v3-os16", "v3-os16-paper-rates", "miou", "mIoU",
                     claim="rates scaled to the 8x8 map beat the paper's (6, 12, 18), two of whose branches "
                           "are 1x1 convs here"))
    out.append(beats("v3-os8", "v3-os8-paper-rates", "miou", "mIoU",
                     claim="rates scaled to the 16x16 map beat the paper's (12, 24, 36)"))
    ok, why = have("v3plus-os16-crf", "v3plus-os16")
    if ok:
        dm = pts("v3plus-os16-crf") - pts("v3plus-os16")
        dt = pts("v3plus-os16-crf", tri) - pts("v3plus-os16", tri)
        out.append(f"CRF on v3plus-os16: mIoU {dm:+.1f} points ({pts('v3plus-os16-crf'):.1f} vs "
                   f"{pts('v3plus-os16'):.1f}), trimap accuracy at {width:g} px {dt:+.1f} points "
                   f"({pts('v3plus-os16-crf', tri):.1f} vs {pts('v3plus-os16', tri):.1f}) (the papers: the CRF "
                   f"raises both: {verdict(dm > 0 and dt > 0)})")
    else:
        out.append(f"CRF: {why}")
    out.append(ordered(["v3plus-os16", "v3-os16", "v2", "v1", "fcn"], "miou", "mIoU by generation",
                       "each DeepLab beats the one before, and v1 beats the FCN"))
    out.append(beats("v3plus-os16", "shallow", "miou", "mIoU", CLEARLY,
                     f"a small field of view does clearly worse, >= {CLEARLY:g} points"))
    if rows:
        out.append(f"one seed per row ({rows[0].get('seed', '?')}): differences of a point or so may be noise")
    return out
