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

Data parallel: launched by ``torchrun --nproc_per_node=N``, ``train`` runs one process of a data-parallel run
whose global batch is batch_size: the single-process run with the same config, up to float rounding
(``training.loop`` and ``training.torch_backend`` say how; tests/test_ddp.py measures it).

The loop is ``training.loop.fit``, shared with the NumPy trainer (``training.numpy_backend``); this module
is the torch trainer: ``train`` is fit with ``TorchBackend``, and the names of ``training`` it uses.
"""

from __future__ import annotations

from dataclasses import fields

from minideeplab.training.checkpoint import CHECKPOINT_FORMAT, export_checkpoint, load_checkpoint, save_checkpoint
from minideeplab.training.config import TrainConfig
from minideeplab.training.data import MEAN, STD, FirstN, epoch_batches, open_split, open_val, to_tensor
from minideeplab.training.evaluation import TRIMAP_WIDTHS, evaluate, predict, segment
from minideeplab.training.loop import best_miou, fit, poly_lr
from minideeplab.training.torch_backend import AUX_WEIGHT, CPUSyncBatchNorm, TorchBackend, build

__all__ = ["TrainConfig", "train", "build", "load_model", "predict", "evaluate", "segment", "poly_lr",
           "epoch_batches", "to_tensor", "FirstN", "open_split", "open_val", "save_checkpoint", "load_checkpoint",
           "export_checkpoint", "best_miou", "CPUSyncBatchNorm", "MEAN", "STD", "TRIMAP_WIDTHS",
           "CHECKPOINT_FORMAT", "AUX_WEIGHT"]


def train(config: TrainConfig, resume: bool = False, quiet: bool = False, log=print, builder=None) -> dict:
    """Train config.model on config.data_root; write out/last.pt every checkpoint_every iterations and at the
    end of every epoch, and out/best.pt when an evaluation beats the best val mIoU so far. resume=True
    continues from out/last.pt (which must come from the same config, up to TrainConfig.RESUMABLE_CHANGES).
    Under torchrun, one process of a data-parallel run (see the module's docstring). Returns the final
    checkpoint dict. builder: (config, num_classes, device) -> the model; None: this module's ``build``
    (``reference.build_model``'s family), looked up at each call; the ablations pass one that also knows
    their shallow network."""
    return fit(config, TorchBackend, resume, quiet, log, build=builder or build)


def _config_of(saved: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names})


def load_model(path, device="cpu", builder=None):
    """(model in eval mode, class names) from a checkpoint; builder as ``train``'s."""
    ckpt = load_checkpoint(path)
    model = (builder or build)(_config_of(ckpt["config"]), len(ckpt["classes"]), device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), list(ckpt["classes"])
