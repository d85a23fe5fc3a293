"""Training, evaluation and single-image segmentation for the reference (PyTorch) DeepLab.

    config = TrainConfig(model="v3plus", backbone="mini", data_root="data/synthetic", out="runs/mini")
    train(config)                                  # writes runs/mini/last.pt (and resumes from it: resume=True)
    model, classes = load_model("runs/mini/last.pt")
    evaluate(model, VOCSegmentation("data/synthetic", "val"), classes, scales=(0.75, 1, 1.25), flip=True)
    segment(model, ["photo.jpg"], "out/", crf=True)

DeepLab's recipe: SGD with momentum and weight decay, the "poly" learning rate
lr = base_lr * (1 - iteration / max_iterations) ** 0.9, cross-entropy that ignores label 255, random
scale / crop / flip (``data.transforms``). Images are normalised with ImageNet's mean and std.

Reproducible and resumable: the order of epoch e is a permutation seeded by (seed, e) and image i of epoch
e is augmented with a Generator seeded by (seed, e, i), so the data of an iteration depend only on its
number, not on the history of a random state (nor on the number of loader workers); dropout draws from
torch's generator, whose state the checkpoint keeps. A resumed run therefore reaches the same weights as an
uninterrupted one, bit for bit on the CPU. Checkpoints hold only tensors and plain Python values
(``torch.load(path, weights_only=True)``) and are written atomically (a temporary file, then os.replace).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minideeplab.data.transforms import IGNORE_INDEX, train_transform
from minideeplab.data.voc import VOCSegmentation, read_image, voc_palette
from minideeplab.metrics import class_iou, confusion_matrix, mean_accuracy, mean_iou, pixel_accuracy, trimap_confusion

MEAN = (0.485, 0.456, 0.406)  # ImageNet's, on RGB in [0, 1]
STD = (0.229, 0.224, 0.225)
TRIMAP_WIDTHS = (1, 2, 4, 8, 16)
CHECKPOINT_FORMAT = 1
AUX_WEIGHT = 0.5  # torchvision's reference scripts: loss = out + 0.5 aux


@dataclass
class TrainConfig:
    """Everything a run depends on (stored in its checkpoints). output_stride None: the model's default.
    checkpoint_every: iterations between checkpoints (0: at the end of each epoch only). eval_every: epochs
    between evaluations on val_split (0: never). train_images / val_images: use only the first N."""

    model: str = "v3plus"
    backbone: str = "mini"
    output_stride: int | None = None
    data_root: str = "data/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    out: str = "runs/deeplab"
    epochs: int = 30
    batch_size: int = 8
    crop_size: int = 128
    scale_range: tuple = (0.5, 2.0)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    seed: int = 0
    eval_every: int = 1
    checkpoint_every: int = 0
    train_images: int | None = None
    val_images: int | None = None
    num_workers: int = 0
    device: str = "cpu"

    # fields that may differ between a run and its resumption (they do not change the weights)
    RESUMABLE_CHANGES = ("eval_every", "checkpoint_every", "val_images", "num_workers", "device", "out")

    def __post_init__(self):
        self.scale_range = tuple(float(s) for s in self.scale_range)
        for name in ("epochs", "batch_size", "crop_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "batch_size" else 1):
                why = " (batch norm needs two samples)" if name == "batch_size" else ""
                raise ValueError(f"TrainConfig: {_flag(name)} must be an int >= {2 if name == 'batch_size' else 1}"
                                 f"{why}, got {v!r}")
        for name in ("eval_every", "checkpoint_every", "num_workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"TrainConfig: {_flag(name)} must be an int >= 0, got {v!r}")
        for name in ("train_images", "val_images"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"TrainConfig: {_flag(name)} must be None (all) or an int >= 1, got {v!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig: {_flag('lr')} must be a number > 0, got {self.lr!r}")
        for name in ("momentum", "weight_decay", "power"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"TrainConfig: {_flag(name)} must be a number >= 0, got {v!r}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"TrainConfig: scale_range must be (low, high) with 0 < low <= high, "
                             f"got {self.scale_range}")

    def to_dict(self) -> dict:
        return asdict(self)


def _flag(field):
    """A TrainConfig field with its command-line option: "batch_size (--batch-size)"."""
    return f"{field} (--{ {'num_workers': 'workers'}.get(field, field).replace('_', '-')})"


# ---------------------------------------------------------------------------------------------- data


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, normalised with ImageNet's mean and std."""
    x = torch.tensor(image).permute(2, 0, 1).float().div_(255)  # a copy: PIL's arrays are read-only
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


class _Augmented(torch.utils.data.Dataset):
    """dataset[(epoch, i)] -> (image (3, crop, crop) float32, label (crop, crop) int64), augmented with a
    Generator seeded by (seed, epoch, i): the same every time it is asked for."""

    def __init__(self, dataset, config: TrainConfig):
        self.dataset, self.config = dataset, config

    def __getitem__(self, key):
        epoch, i = key
        rng = np.random.default_rng([self.config.seed, 2, epoch, i])
        c = self.config.crop_size
        image, label = train_transform(*self.dataset[i], rng, (c, c), self.config.scale_range)
        return to_tensor(image), torch.from_numpy(label.astype(np.int64))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The batches of one epoch: a permutation of range(n) seeded by (seed, epoch), cut into full batches
    (the last partial batch is dropped); items are (epoch, index) keys for ``_Augmented``."""
    order = np.random.default_rng([seed, 1, epoch]).permutation(n)
    return [[(epoch, int(i)) for i in order[b * batch_size:(b + 1) * batch_size]] for b in range(n // batch_size)]


class FirstN(torch.utils.data.Dataset):
    """The first n items of a dataset, read lazily."""

    def __init__(self, dataset, n):
        self.dataset, self.n = dataset, len(dataset) if n is None else min(n, len(dataset))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]


def open_split(root, split, what="data root") -> VOCSegmentation:
    """VOCSegmentation(root, split) with errors that name the option and the path."""
    try:
        return VOCSegmentation(root, split)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} {root}, split {split!r}: {e}") from None


# ---------------------------------------------------------------------------------------------- training


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """DeepLab's "poly" schedule: base_lr * (1 - iteration / max_iterations) ** power."""
    return base_lr * (1 - iteration / max_iterations) ** power


def build(config: TrainConfig, num_classes: int):
    """The model of a config, in train mode, on config.device."""
    from minideeplab.reference.deeplab import build_model

    return build_model(config.model, config.backbone, config.output_stride, num_classes).to(config.device)


def save_checkpoint(checkpoint: dict, path) -> Path:
    """torch.save to a temporary file in path's folder, then os.replace: a reader (or a crash) sees the old
    file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint written by ``train`` (loaded with weights_only=True); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated files, foreign objects refused by weights_only
        raise ValueError(f"checkpoint {path} could not be read: {e}") from None
    missing = [k for k in ("format", "model", "optimizer", "iteration", "config", "classes") if k not in ckpt]
    if not isinstance(ckpt, dict) or missing:
        raise ValueError(f"{path} is not a minideeplab checkpoint (missing {missing})")
    return ckpt


def load_model(path, device="cpu"):
    """(model in eval mode, class names) from a checkpoint."""
    ckpt = load_checkpoint(path)
    fieldnames = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in fieldnames})
    config.device = device
    model = build(config, len(ckpt["classes"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), list(ckpt["classes"])


def _progress(quiet):
    return not quiet and sys.stderr.isatty()


def train(config: TrainConfig, resume: bool = False, quiet: bool = False, log=print) -> dict:
    """Train config.model on config.data_root; write out/last.pt every checkpoint_every iterations and at the
    end of every epoch. resume=True continues from out/last.pt (which must come from the same config, up to
    TrainConfig.RESUMABLE_CHANGES). Returns the final checkpoint dict."""
    out = Path(config.out)
    last = out / "last.pt"
    train_set = FirstN(open_split(config.data_root, config.train_split), config.train_images)
    classes = list(train_set.dataset.classes)
    val_set = FirstN(open_split(config.data_root, config.val_split), config.val_images) if config.eval_every else None
    if config.batch_size > len(train_set):
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train_set)} training images")
    per_epoch = len(train_set) // config.batch_size
    max_iter = config.epochs * per_epoch

    torch.manual_seed(config.seed)
    model = build(config, len(classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    it, history = 0, []
    if resume:
        ckpt = load_checkpoint(last)
        _check_same_run(ckpt["config"], config, last)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if config.device.startswith("cuda") and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], torch.device(config.device))
        it, history = ckpt["iteration"], list(ckpt["metrics"])
        log(f"resumed from {last} at iteration {it}/{max_iter}")

    def checkpoint():
        cuda = torch.cuda.get_rng_state(torch.device(config.device)) if config.device.startswith("cuda") else None
        ckpt = {"format": CHECKPOINT_FORMAT, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "iteration": it, "epoch": it / per_epoch,
                "config": config.to_dict(), "classes": classes, "metrics": history,
                "rng": {"torch": torch.get_rng_state(), "cuda": cuda}}
        save_checkpoint(ckpt, last)
        return ckpt

    from tqdm import tqdm

    data = _Augmented(train_set, config)
    model.train()
    ckpt = None
    with tqdm(total=max_iter, initial=it, unit="it", desc="train", disable=not _progress(quiet),
              dynamic_ncols=True) as bar:
        while it < max_iter:
            epoch, start = divmod(it, per_epoch)
            loader = torch.utils.data.DataLoader(data, batch_sampler=epoch_batches(len(train_set), config.batch_size,
                                                                                   config.seed, epoch)[start:],
                                                 num_workers=config.num_workers,
                                                 generator=torch.Generator().manual_seed(config.seed))
            tic, seen, running = time.perf_counter(), 0, None
            for x, y in loader:
                x, y = x.to(config.device), y.to(config.device)
                lr = poly_lr(config.lr, it, max_iter, config.power)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                result = model(x)
                loss = F.cross_entropy(result["out"], y, ignore_index=IGNORE_INDEX)
                if "aux" in result:
                    loss = loss + AUX_WEIGHT * F.cross_entropy(result["aux"], y, ignore_index=IGNORE_INDEX)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                it += 1
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(f"train: the loss is {value} at iteration {it} (lr {lr:.3g}); "
                                             f"try a smaller --lr")
                seen += len(x)
                running = value if running is None else 0.9 * running + 0.1 * value
                bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.2e}",
                                img_s=f"{seen / (time.perf_counter() - tic):.1f}", refresh=False)
                bar.update()
                if it % per_epoch == 0:
                    break
                if config.checkpoint_every and it % config.checkpoint_every == 0:
                    ckpt = checkpoint()
            # end of an epoch
            epoch += 1
            record = {"iteration": it, "epoch": epoch, "loss": running, "lr": lr,
                      "images_per_s": seen / (time.perf_counter() - tic)}
            if val_set is not None and (epoch % config.eval_every == 0 or it == max_iter):
                scores = evaluate(model, val_set, classes, device=config.device, quiet=True)
                record.update(scores)
                model.train()
            history.append(record)
            val = f"  val mIoU {record['miou']:.4f}" if "miou" in record else ""
            log(f"epoch {epoch}/{config.epochs}  iteration {it}/{max_iter}  loss {running:.4f}  "
                f"{record['images_per_s']:.1f} img/s{val}")
            ckpt = checkpoint()
    if ckpt is None:  # nothing left to do: resumed from the final checkpoint
        ckpt = load_checkpoint(last)
    return ckpt


def _check_same_run(saved: dict, config: TrainConfig, path):
    now = config.to_dict()
    differ = [k for k in now if k not in TrainConfig.RESUMABLE_CHANGES and _plain(saved.get(k)) != _plain(now[k])]
    if differ:
        raise ValueError(f"--resume: {path} was written by a run with " +
                         ", ".join(f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in differ) +
                         "; resume with the interrupted run's arguments")


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------------------------------------- inference


@torch.no_grad()
def predict(model, image: np.ndarray, scales=(1.0,), flip: bool = False, device="cpu") -> torch.Tensor:
    """Class probabilities for one (H, W, 3) uint8 image -> (C, H, W) float32 on the CPU: the mean of the
    softmax over the scales (and, with flip, the mirror images'). Each input is padded at the bottom and right
    to a multiple of the model's output stride (with the mean colour, 0 after normalisation) and the logits are
    cropped back before they are resized to (H, W)."""
    model.eval()
    x = to_tensor(image)[None].to(device)
    H, W = x.shape[-2:]
    stride = getattr(getattr(model, "config", None), "output_stride", 1)
    total = 0
    for s in scales:
        h, w = max(1, round(H * s)), max(1, round(W * s))
        xs = x if (h, w) == (H, W) else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        for mirror in ((False, True) if flip else (False,)):
            xm = xs.flip(-1) if mirror else xs
            logits = model(F.pad(xm, (0, -w % stride, 0, -h % stride)))["out"][..., :h, :w]
            logits = logits.flip(-1) if mirror else logits
            if (h, w) != (H, W):
                logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
            total = total + logits.softmax(1)
    return (total / (len(scales) * (2 if flip else 1)))[0].float().cpu()


def evaluate(model, dataset, classes, scales=(1.0,), flip=False, widths=TRIMAP_WIDTHS, device="cpu",
             quiet=False) -> dict:
    """Score a model on a data set of (image (H, W, 3) uint8, label (H, W)) pairs, full images, from one
    confusion matrix summed over the set (VOC's way) -> {"miou", "pixel_accuracy", "mean_accuracy",
    "per_class_iou" {class: IoU or nan}, "trimap_accuracy" {width: pixel accuracy within that many pixels of
    a boundary}, "images"}."""
    from tqdm import tqdm

    C = len(classes)
    cm = np.zeros((C, C), np.int64)
    trimap = np.zeros((len(widths), C, C), np.int64)
    for i in tqdm(range(len(dataset)), desc="eval", unit="img", disable=not _progress(quiet), leave=False):
        image, label = dataset[i]
        pred = predict(model, image, scales, flip, device).argmax(0).numpy()
        cm += confusion_matrix(pred, label, C, IGNORE_INDEX)
        trimap += trimap_confusion(pred, label, widths, C, IGNORE_INDEX)
    return {"miou": mean_iou(cm), "pixel_accuracy": pixel_accuracy(cm), "mean_accuracy": mean_accuracy(cm),
            "per_class_iou": dict(zip(classes, class_iou(cm).tolist())),
            "trimap_accuracy": {str(w): pixel_accuracy(t) for w, t in zip(widths, trimap)},
            "images": len(dataset)}


def segment(model, images, out, classes=None, scales=(1.0,), flip=False, crf=False, alpha=0.5, device="cpu",
            quiet=False) -> list[Path]:
    """For each image file write out/<stem>.png (the class map as a VOC palette PNG) and
    out/<stem>_overlay.png (the image blended with the class colours, alpha the colours' weight).
    crf: refine the probabilities with the dense CRF (scratch.crf.dense_crf, DeepLab v2's parameters: its
    defaults). Returns the written paths."""
    from PIL import Image
    from tqdm import tqdm

    paths = [Path(p) for p in images]
    stems = {}
    for p in paths:
        if p.stem in stems:
            raise ValueError(f"segment: {stems[p.stem]} and {p} would both write {p.stem}.png; rename one")
        stems[p.stem] = p
    if not 0 <= alpha <= 1:
        raise ValueError(f"segment: alpha must be in [0, 1], got {alpha!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    written = []
    for p in tqdm(paths, desc="segment", unit="img", disable=not _progress(quiet)):
        image = read_image(p)
        probs = predict(model, image, scales, flip, device).numpy()
        if crf:
            from minideeplab.scratch.crf import dense_crf

            probs = dense_crf(probs / probs.sum(0, keepdims=True), image)
        pred = probs.argmax(0).astype(np.uint8)
        label = Image.fromarray(pred, mode="P")
        label.putpalette(palette.tobytes())
        overlay = ((1 - alpha) * image + alpha * palette[pred]).round().astype(np.uint8)
        for path, im in ((out / f"{p.stem}.png", label), (out / f"{p.stem}_overlay.png", Image.fromarray(overlay))):
            im.save(path)
            written.append(path)
    return written
