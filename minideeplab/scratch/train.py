"""Training DeepLab in NumPy: the twin of ``minideeplab.train.train`` (PyTorch), with the same config, data,
schedule and checkpoints. One iteration is the whole algorithm (``train_step``):

    logits, cache = model.forward(x)                          # training: batch statistics, dropout
    loss, dlogits = softmax_cross_entropy(logits, y, 255)     # + 0.5 * the aux head's loss, if it has one
    grads = model.backward(dlogits, cache)
    sgd_step(model.params, grads, poly_lr(...), momentum, weight_decay, state)

    config = TrainConfig(model="v3plus", backbone="mini", data_root="data/synthetic", out="runs/numpy")
    train(config)                                     # writes runs/numpy/last.pt (resume=True continues it)
    model, classes = minideeplab.train.load_model("runs/numpy/last.pt")  # the torch twin; to_scratch(model)

Shared with the torch trainer (imported, not copied): the data (``epoch_batches``, ``_Augmented`` through a
DataLoader; its tensors become arrays with ``.numpy()``), ``poly_lr``, checkpoints and ``evaluate``.

Initialisation: the torch trainer's, torch.manual_seed(seed) then ``minideeplab.train.build``, copied into
the scratch model with ``to_scratch``: both trainers start from the same weights for the same seed.

Dropout: the masks of iteration t are drawn from np.random.default_rng([seed, 3, t]); like the data, they
depend only on the iteration's number, so a resumed run reaches the uninterrupted run's weights bit for bit
with no random state in the checkpoint. (The torch trainer draws its masks from torch's generator, so the
two runs differ there; tests/test_scratch_train.py gives the torch model this run's masks to compare them.)

Checkpoint: ``minideeplab.train``'s format, read by ``load_model`` and ``minideeplab eval``: "model" the
params and buffers as torch tensors keyed as the torch twin's state_dict, "optimizer" the momentum buffers
in torch.optim.SGD's state_dict layout, "losses" every iteration's loss, "rng" empty (see Dropout);
out/best.pt: the checkpoint of the best val mIoU so far. CPU, one process.

Against the torch trainer (tests/test_scratch_train.py): float64 losses agree to ~1e-14 over 20 steps at lr
0.001. At the default lr 0.01 any difference, float rounding's included, grows by orders of magnitude in a few
steps, in torch's own run as much, so float32 runs part (past 1e-4) after 2-3 steps, float64 ones after ~10.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from minideeplab.data.transforms import IGNORE_INDEX
from minideeplab.reference.deeplab import to_scratch
from minideeplab.scratch.deeplab import sgd_step
from minideeplab.scratch.layers import softmax_cross_entropy
from minideeplab.train import (AUX_WEIGHT, CHECKPOINT_FORMAT, FirstN, TrainConfig, _Augmented, _check_same_run,
                               _progress, build, epoch_batches, evaluate, load_checkpoint, open_split, open_val,
                               poly_lr, save_checkpoint)

__all__ = ["train", "train_step"]


def train_step(model, x, y, lr, momentum, weight_decay, state) -> float:
    """One SGD iteration of a scratch DeepLab in training mode, in place: x (N, 3, H, W) in the model's
    dtype, y (N, H, W) labels (IGNORE_INDEX not counted) -> the loss. state: the momentum buffers (updated)."""
    logits, cache = model.forward(x)
    loss, dlogits = softmax_cross_entropy(logits, y, IGNORE_INDEX)
    daux = None
    if cache.aux is not None:
        aux_loss, daux = softmax_cross_entropy(cache.aux, y, IGNORE_INDEX)
        loss, daux = loss + AUX_WEIGHT * aux_loss, daux * daux.dtype.type(AUX_WEIGHT)
    sgd_step(model.params, model.backward(dlogits, cache, daux), lr, momentum, weight_decay, state)
    return float(loss)


class _Predictor:
    """A scratch model behind the interface ``minideeplab.train.predict`` uses (eval(), parameters() for the
    dtype, config.output_stride, model(x tensor) -> {"out": logits tensor}): the network runs in NumPy
    (``model_infer``), predict's normalisation, padding and softmax in torch."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def eval(self):
        self.model.eval()
        return self

    def parameters(self):
        yield torch.empty(0, dtype=getattr(torch, self.model.dtype.name))

    def __call__(self, x):
        return {"out": torch.from_numpy(self.model(x.numpy()))}


def train(config: TrainConfig, resume: bool = False, quiet: bool = False, log=print) -> dict:
    """``minideeplab.train.train`` in NumPy: the same arguments, files (out/last.pt, out/best.pt) and returned
    checkpoint; the weights and the arithmetic in config.dtype."""
    if config.device != "cpu":
        raise ValueError(f"scratch train: the NumPy trainer runs on the CPU, got device {config.device!r} "
                         f"(--device); use minideeplab.train.train for {config.device!r}")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ValueError(f"scratch train: the NumPy trainer runs in one process, got WORLD_SIZE "
                         f"{os.environ['WORLD_SIZE']} (torchrun); use minideeplab.train.train for data parallel")
    last, best_path = Path(config.out) / "last.pt", Path(config.out) / "best.pt"
    train_set = FirstN(open_split(config.data_root, config.train_split), config.train_images)
    classes = list(train_set.dataset.classes)
    val_set = FirstN(open_val(config, classes), config.val_images) if config.eval_every else None
    if config.batch_size > len(train_set):
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train_set)} training images")
    per_epoch = len(train_set) // config.batch_size
    max_iter = config.epochs * per_epoch

    torch.manual_seed(config.seed)
    twin = build(config, len(classes))  # the torch trainer's initial weights, in config.dtype
    keys, names = list(twin.state_dict()), [n for n, _ in twin.named_parameters()]
    model = to_scratch(twin).train()
    it, history, losses, state, lr = 0, [], [], {}, config.lr
    if resume:
        ckpt = load_checkpoint(last, resumable=True)
        _check_same_run(ckpt["config"], config, last)
        for d in (model.params, model.buffers):
            d.update({k: ckpt["model"][k].numpy().copy() for k in d})
        state = {names[i]: s["momentum_buffer"].numpy().copy() for i, s in ckpt["optimizer"]["state"].items()}
        it, history = ckpt["iteration"], list(ckpt["metrics"])
        losses = list(ckpt.get("losses", [math.nan] * it))
        log(f"resumed from {last} at iteration {it}/{max_iter}")
    best = max((r["miou"] for r in history if "miou" in r), default=-math.inf)

    def checkpoint(also=None):
        weights = {**model.params, **model.buffers}
        sgd = {"state": {i: {"momentum_buffer": torch.from_numpy(state[k].copy())} for i, k in enumerate(names)
                         if k in state},
               "param_groups": [{"lr": lr, "momentum": config.momentum, "dampening": 0, "nesterov": False,
                                 "weight_decay": config.weight_decay, "params": list(range(len(names)))}]}
        ckpt = {"format": CHECKPOINT_FORMAT, "model": {k: torch.from_numpy(np.array(weights[k])) for k in keys},
                "optimizer": sgd, "iteration": it, "epoch": it / per_epoch, "config": config.to_dict(),
                "classes": classes, "metrics": history, "losses": list(losses), "world_size": 1, "rng": {}}
        for path in ([also] if also else []) + [last]:  # best.pt first: a crash between leaves it ahead
            save_checkpoint(ckpt, path)
        return ckpt

    from tqdm import tqdm

    data, ckpt = _Augmented(train_set, config), None
    with tqdm(total=max_iter, initial=it, unit="it", desc="train (numpy)", disable=not _progress(quiet),
              dynamic_ncols=True) as bar:
        while it < max_iter:
            epoch, start = divmod(it, per_epoch)
            batches = epoch_batches(len(train_set), config.batch_size, config.seed, epoch)[start:]
            loader = torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=config.num_workers)
            tic, seen, running = time.perf_counter(), 0, None
            for x, y in loader:
                lr = poly_lr(config.lr, it, max_iter, config.power)
                model.rng = np.random.default_rng([config.seed, 3, it])  # this iteration's dropout masks
                loss = train_step(model, x.numpy().astype(model.dtype), y.numpy(), lr, config.momentum,
                                  config.weight_decay, state)
                it += 1
                if not math.isfinite(loss):
                    raise FloatingPointError(f"train: the loss is {loss} at iteration {it} (lr {lr:.3g}); "
                                             f"try a smaller --lr")
                losses.append(loss)
                seen += len(x)
                running = loss if running is None else 0.9 * running + 0.1 * loss
                bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.2e}",
                                img_s=f"{seen / (time.perf_counter() - tic):.1f}", refresh=False)
                bar.update()
                if it % per_epoch == 0:
                    break
                if config.checkpoint_every and it % config.checkpoint_every == 0:
                    ckpt = checkpoint()
            epoch += 1
            record = {"iteration": it, "epoch": epoch, "loss": running, "losses": losses[(epoch - 1) * per_epoch:it],
                      "lr": lr, "images_per_s": seen / (time.perf_counter() - tic)}
            improved = False
            if val_set is not None and (epoch % config.eval_every == 0 or it == max_iter):
                record.update(evaluate(_Predictor(model), val_set, classes, quiet=True))
                model.train()
                improved = record["miou"] > best  # nan (no class seen) never improves
                best = max(best, record["miou"]) if improved else best
            history.append(record)
            val = f"  val mIoU {record['miou']:.4f}{' (best)' if improved else ''}" if "miou" in record else ""
            log(f"epoch {epoch}/{config.epochs}  iteration {it}/{max_iter}  loss {running:.4f}  "
                f"{record['images_per_s']:.1f} img/s{val}")
            ckpt = checkpoint(best_path if improved else None)
    return load_checkpoint(last) if ckpt is None else ckpt
