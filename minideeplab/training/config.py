"""TrainConfig: everything a training run depends on, stored in its checkpoints, and the check that a resumed
run is the one that wrote the checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class TrainConfig:
    """Everything a run depends on (stored in its checkpoints). output_stride None: the model's default.
    batch_size: the global batch (split over the processes under torchrun). checkpoint_every: iterations
    between checkpoints (0: at the end of each epoch only). eval_every: epochs between evaluations on
    val_split (0: never). train_images / val_images: use only the first N. val_root: the folder whose
    val_split is evaluated (None: data_root), e.g. the committed set while training on a larger generated one.
    model_options: more arguments of ``reference.deeplab.build_model`` (image_pooling, atrous_rates,
    aspp_channels, dropout, aux, crf, ...), plain values (a dict of them for crf: {"n_iters": 5}).
    init_from: a checkpoint (a run's, or an exported one) whose weights the run starts from, with a fresh
    optimiser at iteration 0 (``training.loop``); None: fresh weights from seed. A resumed run resumes.
    optimizer: "sgd" (DeepLab's; momentum, weight_decay) or "adamw" (the transformers'; weight_decay decoupled,
    momentum unused), ``training.optimizers``. warmup_iters: the learning rate rises linearly over the first
    warmup_iters iterations (0: none), times the poly schedule (``training.loop.scheduled_lr``)."""

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
    init_from: str | None = None
    optimizer: str = "sgd"
    warmup_iters: int = 0

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
        for name in ("eval_every", "checkpoint_every", "num_workers", "seed", "warmup_iters"):
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
        from minideeplab.training.optimizers import get_optimizer

        get_optimizer(self.optimizer)  # its ValueError names --optimizer and the choices
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"TrainConfig: {_flag('dtype')} must be 'float32' or 'float64', got {self.dtype!r}")
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(f"TrainConfig: {_flag('init_from')} must be None or a checkpoint's path, "
                             f"got {self.init_from!r}")
        if not isinstance(self.model_options, dict):
            raise ValueError(f"TrainConfig: model_options must be a dict, got {type(self.model_options).__name__}")
        for k, v in self.model_options.items():
            if not (isinstance(k, str) and k.isidentifier() and _is_plain(v)):
                raise ValueError(f"TrainConfig: model_options must map option names to plain values (numbers, "
                                 f"strings, bools, None, tuples or str-keyed dicts of them), got {k!r}: {v!r}")
        # lists (a checkpoint's, or JSON's) as tuples, what build_model's callers pass
        self.model_options = {k: _as_tuples(v) for k, v in self.model_options.items()}

    def to_dict(self) -> dict:
        return asdict(self)


def _flag(name):
    """A TrainConfig field with its command-line option: "batch_size (--batch-size)"."""
    return f"{name} (--{ {'num_workers': 'workers'}.get(name, name).replace('_', '-')})"


def _is_plain(v):
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (tuple, list)) and all(_is_plain(x) for x in v)) or (
        isinstance(v, dict) and all(isinstance(k, str) and _is_plain(x) for k, x in v.items()))


def _as_tuples(v):
    if isinstance(v, dict):
        return {k: _as_tuples(x) for k, x in v.items()}
    return tuple(_as_tuples(x) for x in v) if isinstance(v, (tuple, list)) else v


def check_same_run(saved: dict, config: TrainConfig, path):
    """Raise unless config is the run whose config (a checkpoint's "config") is saved, up to
    TrainConfig.RESUMABLE_CHANGES; a field added since `saved` was written counts as its default."""
    now, default = config.to_dict(), TrainConfig().to_dict()
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
