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
out/best.pt is the checkpoint of the best validation mIoU so far; checkpoints keep the raw loss of every
iteration ("losses"; each epoch's also in its "metrics" record).

Data parallel: launched by ``torchrun --nproc_per_node=N`` (RANK, WORLD_SIZE, LOCAL_RANK in the
environment), ``train`` joins a process group (gloo on the CPU, NCCL for config.device "cuda", each process
on cuda:LOCAL_RANK) and wraps the model in DistributedDataParallel. batch_size is the global batch: every
process cuts the same ``epoch_batches`` and takes its contiguous share, each process's loss is its pixels'
share of the global batch's mean, and batch norm sees the whole global batch, so a run of N processes is the
single-process run with the same config, up to float rounding (tests/test_ddp.py measures it). Batch norm:
nn.SyncBatchNorm on GPUs; torch 2.14 has no CPU SyncBatchNorm (nn.SyncBatchNorm raises "SyncBatchNorm
expected input tensor to be on GPU" and its kernels, aten::batch_norm_stats and friends, are CUDA-only;
pytorch PR #78078, which would have added them, was closed unmerged), so on the CPU the statistics are
summed over the processes with a differentiable all_reduce (``CPUSyncBatchNorm``). Only rank 0 logs and
writes checkpoints; evaluation is split over the processes and their confusion matrices summed.
Checkpoints hold the plain model's state_dict, so a run may resume with another number of processes (same
data and schedule; the rounding and the dropout draws differ from the interrupted run's).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
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
    batch_size: the global batch (split over the processes under torchrun). checkpoint_every: iterations
    between checkpoints (0: at the end of each epoch only). eval_every: epochs between evaluations on
    val_split (0: never). train_images / val_images: use only the first N. val_root: the folder whose
    val_split is evaluated (None: data_root), e.g. the committed set while training on a larger generated one.
    model_options: more arguments of ``reference.deeplab.build_model`` (image_pooling, atrous_rates,
    aspp_channels, dropout, aux, ...), plain values."""

    model: str = "v3plus"
    backbone: str = "mini"
    output_stride: int | None = None
    data_root: str = "data/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    val_root: str | None = None  # the folder of val_split (None: data_root)
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
    model_options: dict = field(default_factory=dict)
    dtype: str = "float32"  # "float64": slow, for exact comparisons (the data-parallel test)

    # fields that may differ between a run and its resumption (they do not change the weights)
    RESUMABLE_CHANGES = ("eval_every", "checkpoint_every", "val_images", "val_root", "num_workers", "device", "out")

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
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"TrainConfig: {_flag('dtype')} must be 'float32' or 'float64', got {self.dtype!r}")
        if not isinstance(self.model_options, dict):
            raise ValueError(f"TrainConfig: model_options must be a dict, got {type(self.model_options).__name__}")
        for k, v in self.model_options.items():
            if not (isinstance(k, str) and k.isidentifier() and _is_plain(v)):
                raise ValueError(f"TrainConfig: model_options must map option names to plain values (numbers, "
                                 f"strings, bools, None, tuples of them), got {k!r}: {v!r}")
        # lists (a checkpoint's, or JSON's) as tuples, what build_model's callers pass
        self.model_options = {k: _as_tuples(v) for k, v in self.model_options.items()}

    def to_dict(self) -> dict:
        return asdict(self)


def _flag(name):
    """A TrainConfig field with its command-line option: "batch_size (--batch-size)"."""
    return f"{name} (--{ {'num_workers': 'workers'}.get(name, name).replace('_', '-')})"


def _is_plain(v):
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (tuple, list)) and all(_is_plain(x) for x in v))


def _as_tuples(v):
    return tuple(_as_tuples(x) for x in v) if isinstance(v, (tuple, list)) else v


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


def open_val(config: TrainConfig, classes=None) -> VOCSegmentation:
    """The validation split of a config: val_split of val_root, or of data_root when val_root is None.
    classes: the training set's, which the validation set must have (same names, same order)."""
    if config.val_root is None:
        val = open_split(config.data_root, config.val_split)
    else:
        val = open_split(config.val_root, config.val_split, "val root")
    if classes is not None and list(val.classes) != list(classes):
        raise ValueError(f"val root {config.val_root} has classes {list(val.classes)}, the data root "
                         f"{config.data_root} has {list(classes)}")
    return val


# ---------------------------------------------------------------------------------------------- training


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """DeepLab's "poly" schedule: base_lr * (1 - iteration / max_iterations) ** power."""
    return base_lr * (1 - iteration / max_iterations) ** power


def build(config: TrainConfig, num_classes: int, device=None):
    """The model of a config (with its model_options), in train mode, on device (default: config.device), in
    config.dtype."""
    from minideeplab.reference.deeplab import build_model

    model = build_model(config.model, config.backbone, config.output_stride, num_classes, **config.model_options)
    return model.to(device=device or config.device, dtype=getattr(torch, config.dtype))


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


def load_checkpoint(path, map_location="cpu", resumable=False) -> dict:
    """A checkpoint written by ``train`` or ``export_checkpoint`` (loaded with weights_only=True); errors name
    the file. resumable: also require what ``--resume`` needs (the optimizer's state), which an exported
    checkpoint drops."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated files, foreign objects refused by weights_only
        raise ValueError(f"checkpoint {path} could not be read: {e}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a minideeplab checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in ("format", "model", "iteration", "config", "classes") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a minideeplab checkpoint (missing {missing})")
    if resumable and "optimizer" not in ckpt:
        raise ValueError(f"{path} holds weights only (an exported checkpoint: no optimizer state), so a run "
                         f"cannot resume from it; resume from the run's own last.pt")
    return ckpt


def export_checkpoint(src, dst, dtype: str = "float16") -> Path:
    """Write a checkpoint to ship: src's weights (floating-point tensors in ``dtype``; integer buffers as they
    are), config, classes, per-epoch metrics and per-iteration losses, without the optimizer's momentum or the
    random states (last.pt holds float32 weights and as many momentum values), so it is about half of last.pt
    in float32 and a quarter in float16, and cannot be resumed.
    ``load_model`` reads it like any checkpoint (the weights are cast to the config's dtype)."""
    if dtype not in ("float16", "float32", "float64"):
        raise ValueError(f"export_checkpoint: dtype must be 'float16', 'float32' or 'float64', got {dtype!r}")
    ckpt = load_checkpoint(src)
    to = getattr(torch, dtype)
    model = {k: v.to(to) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    keep = ("format", "iteration", "epoch", "config", "classes", "metrics", "losses", "world_size")
    shipped = {k: ckpt[k] for k in keep if k in ckpt}
    shipped.update(model=model, exported={"from": str(src), "dtype": dtype})
    return save_checkpoint(shipped, dst)


def _config_of(saved: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names})


def load_model(path, device="cpu"):
    """(model in eval mode, class names) from a checkpoint."""
    ckpt = load_checkpoint(path)
    model = build(_config_of(ckpt["config"]), len(ckpt["classes"]), device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), list(ckpt["classes"])


def _progress(quiet):
    return not quiet and sys.stderr.isatty()


# ---------------------------------------------------------------------------------------------- data parallel


def _world() -> tuple[int, int, int]:
    """(world size, rank, local rank): an initialised process group's, else torchrun's environment."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank(), local
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), local


class _AllReduceSum(torch.autograd.Function):
    """dist.all_reduce (sum) with a gradient: the gradient of a sum over the processes is the sum of theirs."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(torch.nn.BatchNorm2d):
    """nn.SyncBatchNorm for CPU tensors, which torch lacks: in training, the mean and (biased) variance of
    the whole global batch, summed over the processes (two passes, as F.batch_norm; every process holds the
    same number of values), the running variance unbiased by the global count. In eval mode, BatchNorm2d."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        n = x.numel() // x.shape[1] * dist.get_world_size()
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got {n} over the processes")
        mean = _AllReduceSum.apply(x.sum((0, 2, 3))) / n
        d = x - mean[:, None, None]
        var = _AllReduceSum.apply((d * d).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                f = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, f)
                self.running_var.lerp_(var * n / (n - 1), f)
        y = d * torch.rsqrt(var + self.eps)[:, None, None]
        return y * self.weight[:, None, None] + self.bias[:, None, None] if self.affine else y


def _sync_batchnorm(model, device):
    """Batch norm over the global batch: nn.SyncBatchNorm on GPUs, CPUSyncBatchNorm on the CPU (same
    parameters and buffers, so the same state_dict keys)."""
    if device.startswith("cuda"):
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if type(m) is torch.nn.BatchNorm2d:
            m.__class__ = CPUSyncBatchNorm  # only forward differs
    return model


def _rng_state(device) -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(torch.device(device)) if device.startswith("cuda") else None}


def _set_rng(state: dict, device):
    if state.get("torch") is None:  # e.g. the NumPy trainer's checkpoints: its dropout is seeded per iteration
        return
    torch.set_rng_state(state["torch"])
    if device.startswith("cuda") and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))


def _rank_seed(seed, rank, iteration):
    """The torch seed of process `rank` > 0 from `iteration` on: its own dropout draws, not rank 0's."""
    return int(np.random.SeedSequence([seed, 3, rank, iteration]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- training


def train(config: TrainConfig, resume: bool = False, quiet: bool = False, log=print) -> dict:
    """Train config.model on config.data_root; write out/last.pt every checkpoint_every iterations and at the
    end of every epoch, and out/best.pt when an evaluation beats the best val mIoU so far. resume=True
    continues from out/last.pt (which must come from the same config, up to TrainConfig.RESUMABLE_CHANGES).
    Under torchrun, one process of a data-parallel run (see the module's docstring). Returns the final
    checkpoint dict."""
    world, rank, local_rank = _world()
    if config.batch_size % world:
        lower = config.batch_size - config.batch_size % world
        some = f"{lower} or {lower + world}" if lower >= 2 else f"{lower + world}"
        raise ValueError(f"{_flag('batch_size')} is the global batch, split over the {world} processes: it must "
                         f"be a multiple of {world}, got {config.batch_size} (e.g. {some})")
    if world == 1:
        return _train(config, resume, quiet, log, 1, 0, config.device)
    device = f"cuda:{local_rank}" if config.device.startswith("cuda") else config.device
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        return _train(config, resume, quiet or rank > 0, log if rank == 0 else (lambda *a: None), world, rank,
                      device)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(config, resume, quiet, log, world, rank, device) -> dict:
    out = Path(config.out)
    last, best_path = out / "last.pt", out / "best.pt"
    train_set = FirstN(open_split(config.data_root, config.train_split), config.train_images)
    classes = list(train_set.dataset.classes)
    val_set = FirstN(open_val(config, classes), config.val_images) if config.eval_every else None
    if config.batch_size > len(train_set):
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train_set)} training images")
    per_epoch = len(train_set) // config.batch_size
    max_iter = config.epochs * per_epoch
    share = config.batch_size // world

    torch.manual_seed(config.seed)
    net = build(config, len(classes), device)  # the model; `model` runs it (through DDP with several processes)
    if world > 1:
        net = _sync_batchnorm(net, device)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    it, history, losses = 0, [], []
    if resume:
        ckpt = load_checkpoint(last, resumable=True)
        _check_same_run(ckpt["config"], config, last)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        it, history = ckpt["iteration"], list(ckpt["metrics"])
        losses = list(ckpt.get("losses", [math.nan] * it))
        states = ckpt["rng"].get("ranks") or [ckpt["rng"]]
        if len(states) == world or rank == 0:
            _set_rng(states[rank if len(states) == world else 0], device)
        else:
            torch.manual_seed(_rank_seed(config.seed, rank, it))
        was = ckpt.get("world_size", 1)
        log(f"resumed from {last} at iteration {it}/{max_iter}" +
            (f" (written by {was} processes, now {world}: same data and schedule, other rounding and dropout "
             f"draws)" if was != world else ""))
    elif rank:
        torch.manual_seed(_rank_seed(config.seed, rank, 0))
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[torch.cuda.current_device()] if device.startswith("cuda") else None)
    best = max((r["miou"] for r in history if not math.isnan(r.get("miou", math.nan))), default=-math.inf)

    def checkpoint(also=None):
        rng = _rng_state(device)
        ckpt = {"format": CHECKPOINT_FORMAT, "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "optimizer": optimizer.state_dict(), "iteration": it, "epoch": it / per_epoch,
                "config": config.to_dict(), "classes": classes, "metrics": history, "losses": list(losses),
                "world_size": world, "rng": rng}
        if world > 1:
            ranks = [None] * world
            dist.all_gather_object(ranks, rng)
            ckpt["rng"] = {**rng, "ranks": ranks}
        if rank == 0:
            for path in ([also] if also else []) + [last]:  # best.pt first: a crash between leaves it ahead
                save_checkpoint(ckpt, path)
        return ckpt

    from tqdm import tqdm

    data = _Augmented(train_set, config)
    model.train()
    ckpt = None
    with tqdm(total=max_iter, initial=it, unit="it", desc="train", disable=not _progress(quiet),
              dynamic_ncols=True) as bar:
        while it < max_iter:
            epoch, start = divmod(it, per_epoch)
            batches = epoch_batches(len(train_set), config.batch_size, config.seed, epoch)[start:]
            loader = torch.utils.data.DataLoader(data, batch_sampler=[b[rank * share:(rank + 1) * share]
                                                                      for b in batches],
                                                 num_workers=config.num_workers,
                                                 generator=torch.Generator().manual_seed(config.seed))
            tic, seen, running = time.perf_counter(), 0, None
            for x, y in loader:
                x, y = x.to(device=device, dtype=getattr(torch, config.dtype)), y.to(device)
                lr = poly_lr(config.lr, it, max_iter, config.power)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # the mean over the global batch's labelled pixels: each process's sum over its own, divided
                # by that count / world, as DDP averages the processes' gradients
                valid = (y != IGNORE_INDEX).sum()
                if world > 1:
                    dist.all_reduce(valid)
                result = model(x)
                loss = F.cross_entropy(result["out"], y, ignore_index=IGNORE_INDEX, reduction="sum")
                if "aux" in result:
                    loss = loss + AUX_WEIGHT * F.cross_entropy(result["aux"], y, ignore_index=IGNORE_INDEX,
                                                               reduction="sum")
                loss = loss / (valid / world)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                it += 1
                value = loss.detach()
                if world > 1:
                    dist.all_reduce(value)
                value = value.item() / world
                if not math.isfinite(value):
                    raise FloatingPointError(f"train: the loss is {value} at iteration {it} (lr {lr:.3g}); "
                                             f"try a smaller --lr")
                losses.append(value)
                seen += len(x) * world
                running = value if running is None else 0.9 * running + 0.1 * value
                bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.2e}",
                                img_s=f"{seen / (time.perf_counter() - tic):.1f}", refresh=False)
                bar.update()
                if it % per_epoch == 0:
                    break
                if config.checkpoint_every and it % config.checkpoint_every == 0:
                    ckpt = checkpoint()
            # end of an epoch
            record = {"iteration": it, "epoch": epoch + 1, "loss": running, "losses": losses[epoch * per_epoch:it],
                      "lr": lr, "images_per_s": seen / (time.perf_counter() - tic)}
            epoch += 1
            improved = False
            if val_set is not None and (epoch % config.eval_every == 0 or it == max_iter):
                record.update(_evaluate_shared(net, val_set, classes, device, world, rank))
                model.train()
                improved = record["miou"] > best  # nan (no class seen) never improves
                best = record["miou"] if improved else best
            history.append(record)
            val = f"  val mIoU {record['miou']:.4f}{' (best)' if improved else ''}" if "miou" in record else ""
            log(f"epoch {epoch}/{config.epochs}  iteration {it}/{max_iter}  loss {running:.4f}  "
                f"{record['images_per_s']:.1f} img/s{val}")
            ckpt = checkpoint(best_path if improved else None)
    if ckpt is None:  # nothing left to do: resumed from the final checkpoint
        ckpt = load_checkpoint(last)
    return ckpt


def _evaluate_shared(net, dataset, classes, device, world, rank) -> dict:
    """``evaluate`` with the images split over the processes (rank r scores r, r + world, ...) and the
    confusion matrices summed."""
    cm, trimap = _confusions(net, dataset, range(rank, len(dataset), world), len(classes), device=device)
    if world > 1:
        both = torch.from_numpy(np.concatenate([cm.ravel(), trimap.ravel()])).to(device)
        dist.all_reduce(both)
        both = both.cpu().numpy()
        cm, trimap = both[:cm.size].reshape(cm.shape), both[cm.size:].reshape(trimap.shape)
    return _scores(cm, trimap, classes, TRIMAP_WIDTHS, len(dataset))


def _check_same_run(saved: dict, config: TrainConfig, path):
    now, default = config.to_dict(), TrainConfig().to_dict()  # a field added since `saved`: its default
    differ = [k for k in now if k not in TrainConfig.RESUMABLE_CHANGES
              and _plain(saved.get(k, default[k])) != _plain(now[k])]
    if differ:
        raise ValueError(f"--resume: {path} was written by a run with " +
                         ", ".join(f"{k}={saved.get(k, default[k])!r} (now {now[k]!r})" for k in differ) +
                         "; resume with the interrupted run's arguments")


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


# ---------------------------------------------------------------------------------------------- inference


@torch.no_grad()
def predict(model, image: np.ndarray, scales=(1.0,), flip: bool = False, device="cpu") -> torch.Tensor:
    """Class probabilities for one (H, W, 3) uint8 image -> (C, H, W) float32 on the CPU: the mean of the
    softmax over the scales (and, with flip, the mirror images'). Each input is padded at the bottom and right
    to a multiple of the model's output stride (with the mean colour, 0 after normalisation) and the logits are
    cropped back before they are resized to (H, W)."""
    model.eval()
    weight = next(model.parameters(), None)  # the model's dtype (float32 for a model without parameters)
    x = to_tensor(image)[None].to(device=device, dtype=torch.float32 if weight is None else weight.dtype)
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
    cm, trimap = _confusions(model, dataset, range(len(dataset)), len(classes), scales, flip, widths, device, quiet)
    return _scores(cm, trimap, classes, widths, len(dataset))


def _confusions(model, dataset, indices, C, scales=(1.0,), flip=False, widths=TRIMAP_WIDTHS, device="cpu",
                quiet=True):
    """(confusion matrix (C, C), trimap confusions (len(widths), C, C)) summed over dataset[i], i in indices."""
    from tqdm import tqdm

    cm = np.zeros((C, C), np.int64)
    trimap = np.zeros((len(widths), C, C), np.int64)
    for i in tqdm(indices, desc="eval", unit="img", disable=not _progress(quiet), leave=False):
        image, label = dataset[i]
        pred = predict(model, image, scales, flip, device).argmax(0).numpy()
        cm += confusion_matrix(pred, label, C, IGNORE_INDEX)
        trimap += trimap_confusion(pred, label, widths, C, IGNORE_INDEX)
    return cm, trimap


def _scores(cm, trimap, classes, widths, images) -> dict:
    return {"miou": mean_iou(cm), "pixel_accuracy": pixel_accuracy(cm), "mean_accuracy": mean_accuracy(cm),
            "per_class_iou": dict(zip(classes, class_iou(cm).tolist())),
            "trimap_accuracy": {str(w): pixel_accuracy(t) for w, t in zip(widths, trimap)},
            "images": images}


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
