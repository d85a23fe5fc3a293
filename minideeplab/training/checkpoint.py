"""Checkpoints: dicts of tensors and plain Python values (``torch.load(path, weights_only=True)``), written
atomically. Their keys, the same for both trainers:

    format, model (state_dict, CPU tensors), optimizer (torch.optim.SGD's state_dict layout), iteration,
    epoch, config (TrainConfig.to_dict()), classes, metrics (one record per epoch), losses (every
    iteration's), world_size, rng (the trainer's random state; "ranks": each process's, under torchrun)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

CHECKPOINT_FORMAT = 1


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
