"""The training loop, written once for both trainers; a backend supplies the step and the state:

    fit(config, TorchBackend)    # minideeplab.train.train: PyTorch, any device, torchrun
    fit(config, NumpyBackend)    # training.numpy_backend.train (--backend scratch): NumPy, CPU, one process

A backend is a class:

    Backend.check(config, world)    raise for what it cannot run (called before any process group exists)
    b = Backend(config, num_classes, world, rank, device, **options)
                                    the initial weights (from config.seed) and optimizer state
    b.load_state_dict(checkpoint)   continue from a checkpoint's "model", "optimizer", "rng", "iteration"
    b.load_weights(model)           take these weights (a state_dict: every key of state_dict()["model"]), nothing
                                    else: --init-from's start
    b.step(x, y, lr, iteration)     one optimiser iteration on this process's share of a batch, x (n, 3, H, W)
                                    float32 and y (n, H, W) int64 tensors -> the global batch's loss (a float)
    b.state_dict()                  {"model", "optimizer", "rng"} in the checkpoint's layout (training.checkpoint)
    b.predictor()                   a model for evaluation.predict (which sets eval mode; .train() after)
    b.name, b.device                "torch" or "numpy"; where evaluation runs

DeepLab's recipe: SGD with momentum and weight decay, the "poly" learning rate
lr = base_lr * (1 - iteration / max_iterations) ** 0.9, cross-entropy that ignores label 255, random
scale / crop / flip (``training.data``). The transformers' recipe swaps in AdamW and a linear warm-up
(TrainConfig.optimizer "adamw", warmup_iters; ``training.optimizers``, ``scheduled_lr``).

Reproducible and resumable: the data of an iteration depend only on its number (``training.data``), so a
resumed run reaches the same weights as an uninterrupted one, bit for bit on the CPU, provided the backend's
state (its random state included) is in its checkpoint. out/last.pt is written every checkpoint_every
iterations and at the end of every epoch (atomically); out/best.pt when an evaluation beats the best val mIoU
so far (``best_miou``: nan, no class seen, never counts); checkpoints keep the raw loss of every iteration.

Starting from another run's weights (``TrainConfig.init_from``, ``train --init-from``): the weights of a checkpoint
(a run's last.pt or best.pt, or an exported file) replace the fresh ones key by key, with a fresh optimiser at
iteration 0 and the poly schedule from the top; a key of this model that the checkpoint lacks keeps its initial
value (a CRF layer added to a model trained without one starts from its initial kernel weights and Potts), a
key of the checkpoint that this model lacks is not used, and both are named in the log; a key whose shape
differs, or other classes, is an error. A resumed run (``--resume``) continues from its own last.pt instead.

Data parallel: launched by ``torchrun --nproc_per_node=N`` (RANK, WORLD_SIZE, LOCAL_RANK in the
environment), ``fit`` joins a process group (gloo on the CPU, NCCL for config.device "cuda", each process
on cuda:LOCAL_RANK). batch_size is the global batch: every process cuts the same ``epoch_batches`` and takes
its contiguous share (the backend makes its loss the global batch's, ``torch_backend``), so a run of N
processes is the single-process run with the same config, up to float rounding (tests/test_ddp.py measures
it). Only rank 0 logs and writes checkpoints; evaluation is split over the processes and their confusion
matrices summed; the checkpoint's "rng" holds each process's random state ("ranks").
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from minideeplab.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from minideeplab.training.config import TrainConfig, check_same_run
from minideeplab.training.data import Augmented, FirstN, epoch_batches, open_split, open_val
from minideeplab.training.evaluation import TRIMAP_WIDTHS, confusions, scores


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """DeepLab's "poly" schedule: base_lr * (1 - iteration / max_iterations) ** power."""
    return base_lr * (1 - iteration / max_iterations) ** power


def scheduled_lr(config, iteration: int, max_iterations: int) -> float:
    """The learning rate of an iteration: poly, times a linear warm-up over the first config.warmup_iters
    iterations ((iteration + 1) / warmup_iters: the first step at lr / warmup_iters, never 0)."""
    lr = poly_lr(config.lr, iteration, max_iterations, config.power)
    return lr * min(1.0, (iteration + 1) / config.warmup_iters) if config.warmup_iters else lr


def best_miou(history: list[dict]) -> float:
    """The best val mIoU of a run's epoch records (-inf before any): the score best.pt holds, which a new
    evaluation must beat. nan (no class of the val set seen) is no score."""
    return max((r["miou"] for r in history if not math.isnan(r.get("miou", math.nan))), default=-math.inf)


def fit(config: TrainConfig, backend, resume: bool = False, quiet: bool = False, log=print, **options) -> dict:
    """Train config.model on config.data_root with `backend` (see the module's docstring; options: more
    keyword arguments of its constructor); write out/last.pt and out/best.pt. resume=True continues from
    out/last.pt (which must come from the same config, up to TrainConfig.RESUMABLE_CHANGES). Under torchrun,
    one process of a data-parallel run. Returns the final checkpoint dict."""
    world, rank, local_rank = _world()
    backend.check(config, world)
    if config.batch_size % world:
        lower = config.batch_size - config.batch_size % world
        some = f"{lower} or {lower + world}" if lower >= 2 else f"{lower + world}"
        raise ValueError(f"batch_size (--batch-size) is the global batch, split over the {world} processes: it "
                         f"must be a multiple of {world}, got {config.batch_size} (e.g. {some})")
    if world == 1:
        return _fit(config, backend, options, resume, quiet, log, 1, 0, config.device)
    device = f"cuda:{local_rank}" if config.device.startswith("cuda") else config.device
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        result = _fit(config, backend, options, resume, quiet or rank > 0, log if rank == 0 else (lambda *a: None),
                      world, rank, device)
        if own_group:  # every rank done (rank 0 writes the checkpoints last) before any tears the group down
            dist.barrier()
        return result
    finally:
        if own_group:
            dist.destroy_process_group()


def _world() -> tuple[int, int, int]:
    """(world size, rank, local rank): an initialised process group's, else torchrun's environment."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank(), local
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), local


def _fit(config, backend, options, resume, quiet, log, world, rank, device) -> dict:
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

    b = backend(config, len(classes), world, rank, device, **options)
    it, history, losses = 0, [], []
    if resume:
        ckpt = load_checkpoint(last, resumable=True)
        check_same_run(ckpt["config"], config, last)
        b.load_state_dict(ckpt)
        it, history = ckpt["iteration"], list(ckpt["metrics"])
        losses = list(ckpt.get("losses", [math.nan] * it))
        was = ckpt.get("world_size", 1)
        log(f"resumed from {last} at iteration {it}/{max_iter}" +
            (f" (written by {was} processes, now {world}: same data and schedule, other rounding and dropout "
             f"draws)" if was != world else ""))
    elif config.init_from is not None:
        init_weights(b, config.init_from, classes, config, log)
    best = best_miou(history)

    def checkpoint(also=None):
        state = b.state_dict()
        rng = state["rng"]
        if world > 1:
            ranks = [None] * world
            dist.all_gather_object(ranks, rng)
            rng = {**rng, "ranks": ranks}
        ckpt = {"format": CHECKPOINT_FORMAT, "model": state["model"], "optimizer": state["optimizer"],
                "iteration": it, "epoch": it / per_epoch, "config": config.to_dict(), "classes": classes,
                "metrics": history, "losses": list(losses), "world_size": world, "rng": rng}
        if rank == 0:
            for path in ([also] if also else []) + [last]:  # best.pt first: a crash between leaves it ahead
                save_checkpoint(ckpt, path)
        return ckpt

    from tqdm import tqdm

    data = Augmented(train_set, config)
    ckpt = None
    with tqdm(total=max_iter, initial=it, unit="it", desc=f"train ({b.name})",
              disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True) as bar:
        while it < max_iter:
            epoch, start = divmod(it, per_epoch)
            batches = epoch_batches(len(train_set), config.batch_size, config.seed, epoch)[start:]
            # a generator of its own: the loader's seed draw must not move torch's global one (dropout's)
            loader = torch.utils.data.DataLoader(data, batch_sampler=[batch[rank * share:(rank + 1) * share]
                                                                      for batch in batches],
                                                 num_workers=config.num_workers,
                                                 generator=torch.Generator().manual_seed(config.seed))
            tic, cpu, seen, running = time.perf_counter(), time.process_time(), 0, None
            for x, y in loader:
                lr = scheduled_lr(config, it, max_iter)
                value = b.step(x, y, lr, it)
                it += 1
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
                      "lr": lr, "images_per_s": seen / (time.perf_counter() - tic),
                      "cpu_seconds": time.process_time() - cpu}  # this process's, all threads: wall time can
            # include time the process did not run (a suspended job, a busy machine)
            epoch += 1
            improved = False
            if val_set is not None and (epoch % config.eval_every == 0 or it == max_iter):
                model = b.predictor()
                record.update(_evaluate_shared(model, val_set, classes, b.device, world, rank))
                model.train()
                improved = record["miou"] > best  # nan never improves
                best = record["miou"] if improved else best
            history.append(record)
            val = f"  val mIoU {record['miou']:.4f}{' (best)' if improved else ''}" if "miou" in record else ""
            log(f"epoch {epoch}/{config.epochs}  iteration {it}/{max_iter}  loss {running:.4f}  "
                f"{record['images_per_s']:.1f} img/s{val}")
            ckpt = checkpoint(best_path if improved else None)
    if ckpt is None:  # nothing left to do: resumed from the final checkpoint
        ckpt = load_checkpoint(last)
    return ckpt


def init_weights(backend, path, classes, config, log=print) -> dict:
    """--init-from: the weights of checkpoint `path` into the backend's model, key by key (see the module's
    docstring); logs what was taken, kept and left out. -> {"loaded", "kept", "unused"}: lists of keys."""
    ckpt = load_checkpoint(path)
    if list(ckpt["classes"]) != list(classes):
        raise ValueError(f"--init-from {path} was trained on classes {list(ckpt['classes'])}, the data root "
                         f"{config.data_root} has {list(classes)}")
    fresh, saved = backend.state_dict()["model"], ckpt["model"]
    wrong = [f"{k} {tuple(saved[k].shape)} (this model: {tuple(v.shape)})" for k, v in fresh.items()
             if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"--init-from {path}: {len(wrong)} tensor{'s' * (len(wrong) > 1)} of another shape: "
                         f"{', '.join(wrong[:6])}{' ...' * (len(wrong) > 6)}")
    kept, unused = [k for k in fresh if k not in saved], [k for k in saved if k not in fresh]
    backend.load_weights({k: saved[k].to(v.dtype) if k in saved else v for k, v in fresh.items()})
    theirs = ckpt["config"]
    log(f"initialised from {path} (iteration {ckpt['iteration']} of its run): {len(fresh) - len(kept)} of this "
        f"model's {len(fresh)} tensors; fresh optimiser, iteration 0")
    if kept:
        crf = " (the CRF layer starts from its initial parameters: DeepLab's kernel weights, Potts compatibility)" \
            if any(k.startswith("crf.") for k in kept) else ""
        log(f"  not in {path}, kept at their initial values: {', '.join(kept)}{crf}")
    if unused:
        log(f"  in {path} but not in this model, not used: {', '.join(unused)}")
    differ = [f"{k} {theirs.get(k)!r} (now {getattr(config, k)!r})" for k in ("model", "backbone", "output_stride")
              if theirs.get(k) != getattr(config, k)]
    mine, other = dict(config.model_options), dict(theirs.get("model_options") or {})
    differ += [f"{k}={other.get(k)!r} (now {mine.get(k)!r})" for k in sorted(set(mine) | set(other))
               if k != "crf" and _same(other.get(k)) != _same(mine.get(k))]
    if differ:
        log(f"  note: its run had {', '.join(differ)}")
    return {"loaded": [k for k in fresh if k in saved], "kept": kept, "unused": unused}


def _same(v):
    return [_same(x) for x in v] if isinstance(v, (list, tuple)) else v


def _evaluate_shared(model, dataset, classes, device, world, rank) -> dict:
    """``evaluation.evaluate`` with the images split over the processes (rank r scores r, r + world, ...) and
    the confusion matrices summed."""
    cm, trimap = confusions(model, dataset, range(rank, len(dataset), world), len(classes), device=device)
    if world > 1:
        both = torch.from_numpy(np.concatenate([cm.ravel(), trimap.ravel()])).to(device)
        dist.all_reduce(both)
        both = both.cpu().numpy()
        cm, trimap = both[:cm.size].reshape(cm.shape), both[cm.size:].reshape(trimap.shape)
    return scores(cm, trimap, classes, TRIMAP_WIDTHS, len(dataset))
