"""Training DeepLab in NumPy (``minideeplab train --backend scratch``): the scratch model's step and state in
``training.loop``, the torch trainer's twin with the same config, data, schedule and checkpoints. One
iteration is the whole algorithm (``train_step``):

    logits, cache = model.forward(x)                          # training: batch statistics, dropout
    loss, dlogits = softmax_cross_entropy(logits, y, 255)     # + 0.5 * the aux head's loss, if it has one
    grads = model.backward(dlogits, cache)
    sgd_step(model.params, grads, lr, momentum, weight_decay, state)   # or adamw_step (config.optimizer)

    config = TrainConfig(model="v3plus", backbone="mini", data_root="data/synthetic", out="runs/numpy")
    train(config)                                     # writes runs/numpy/last.pt (resume=True continues it)
    model, classes = minideeplab.train.load_model("runs/numpy/last.pt")  # the torch twin; to_scratch(model)

Initialisation: the torch trainer's, torch.manual_seed(seed) then ``torch_backend.build``, copied into the
scratch model with ``to_scratch``: both trainers start from the same weights for the same seed.

Dropout: the masks of iteration t are drawn from np.random.default_rng([seed, 3, t]); like the data, they
depend only on the iteration's number, so a resumed run reaches the uninterrupted run's weights bit for bit
with no random state in the checkpoint. (The torch trainer draws its masks from torch's generator, so the
two runs differ there; tests/test_scratch_train.py gives the torch model this run's masks to compare them.)

Checkpoint: the torch trainer's format, read by ``load_model`` and ``minideeplab eval``: "model" the params
and buffers as torch tensors keyed as the torch twin's state_dict, "optimizer" the optimiser's state (SGD's
momentum buffers, AdamW's moments and step counts) in torch's state_dict layout (``training.optimizers``), "rng"
empty (see Dropout). CPU, one process.

Against the torch trainer (tests/test_scratch_train.py): float64 losses agree to ~1e-14 over 20 steps at lr
0.001. At the default lr 0.01 any difference, float rounding's included, grows by orders of magnitude in a few
steps, in torch's own run as much, so float32 runs part (past 1e-4) after 2-3 steps, float64 ones after ~10.
"""

from __future__ import annotations

import numpy as np
import torch

from minideeplab.data.transforms import IGNORE_INDEX
from minideeplab.reference.deeplab import to_scratch
from minideeplab.scratch.layers import softmax_cross_entropy
from minideeplab.training.config import TrainConfig
from minideeplab.training.loop import fit
from minideeplab.training.optimizers import from_torch_state, get_optimizer, to_torch_state
from minideeplab.training.torch_backend import AUX_WEIGHT, build

__all__ = ["train", "train_step", "NumpyBackend"]


def train(config: TrainConfig, resume: bool = False, quiet: bool = False, log=print) -> dict:
    """``minideeplab.train.train`` in NumPy: the same arguments, files (out/last.pt, out/best.pt) and returned
    checkpoint; the weights and the arithmetic in config.dtype."""
    return fit(config, NumpyBackend, resume, quiet, log)


def train_step(model, x, y, lr, momentum, weight_decay, state, optimizer="sgd") -> float:
    """One iteration of a scratch DeepLab in training mode, in place: x (N, 3, H, W) in the model's
    dtype, y (N, H, W) labels (IGNORE_INDEX not counted) -> the loss. state: the optimiser's (SGD's momentum
    buffers; updated). optimizer: "sgd" or "adamw" (``training.optimizers``; momentum unused by AdamW)."""
    logits, cache = model.forward(x)
    loss, dlogits = softmax_cross_entropy(logits, y, IGNORE_INDEX)
    daux = None
    if cache.aux is not None:
        aux_loss, daux = softmax_cross_entropy(cache.aux, y, IGNORE_INDEX)
        loss, daux = loss + AUX_WEIGHT * aux_loss, daux * daux.dtype.type(AUX_WEIGHT)
    grads = model.backward(dlogits, cache, daux)
    get_optimizer(optimizer).step(model.params, grads, lr, momentum, weight_decay, state)
    return float(loss)


class NumpyBackend:
    """The NumPy trainer's side of ``training.loop.fit``: a scratch DeepLab (``model``), the optimiser's state
    (``state``, name -> one parameter's, ``scratch.optim``) and the last learning rate, for its state_dict."""

    name = "numpy"
    device = "cpu"

    @staticmethod
    def check(config, world):
        if config.device != "cpu":
            raise ValueError(f"scratch train: the NumPy trainer runs on the CPU, got device {config.device!r} "
                             f"(--device); use minideeplab.train.train for {config.device!r}")
        if world > 1:
            raise ValueError(f"scratch train: the NumPy trainer runs in one process, got WORLD_SIZE {world} "
                             f"(torchrun); use minideeplab.train.train for data parallel")

    def __init__(self, config, num_classes: int, world: int = 1, rank: int = 0, device: str = "cpu"):
        self.config, self.lr, self.state = config, config.lr, {}
        torch.manual_seed(config.seed)
        twin = build(config, num_classes)  # the torch trainer's initial weights, in config.dtype
        self.keys, self.names = list(twin.state_dict()), [n for n, _ in twin.named_parameters()]
        self.model = to_scratch(twin).train()

    def step(self, x, y, lr: float, iteration: int) -> float:
        """train_step on a batch of tensors (x (N, 3, H, W) float32, y (N, H, W) int64), its dropout masks drawn
        from the iteration's own generator."""
        self.lr = lr
        self.model.rng = np.random.default_rng([self.config.seed, 3, iteration])
        return train_step(self.model, x.numpy().astype(self.model.dtype), y.numpy(), lr, self.config.momentum,
                          self.config.weight_decay, self.state, self.config.optimizer)

    def state_dict(self) -> dict:
        """The torch trainer's layout: the weights keyed as the twin's state_dict, the optimiser's state as
        torch's optimizer.state_dict() (parameter i: the twin's i-th), no random state."""
        weights = {**self.model.params, **self.model.buffers}
        return {"model": {k: torch.from_numpy(np.array(weights[k])) for k in self.keys},
                "optimizer": to_torch_state(self.config, self.state, self.names, self.lr), "rng": {}}

    def load_state_dict(self, ckpt: dict):
        """Continue from a checkpoint (its "rng" unused: the dropout masks are seeded by the iteration)."""
        for d in (self.model.params, self.model.buffers):
            d.update({k: ckpt["model"][k].numpy().copy() for k in d})
        self.state = from_torch_state(self.config, ckpt["optimizer"], self.names)

    def load_weights(self, model: dict):
        """--init-from: these weights (a full state_dict of the twin's keys), nothing else."""
        for d in (self.model.params, self.model.buffers):
            d.update({k: model[k].numpy().astype(d[k].dtype) for k in d})

    def predictor(self):
        return Predictor(self.model)


class Predictor:
    """A scratch model behind the interface ``evaluation.predict`` uses (eval(), train(), parameters() for the
    dtype, config.output_stride, model(x tensor) -> {"out": logits tensor}): the network runs in NumPy
    (``model_infer``), predict's normalisation, padding and softmax in torch."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def eval(self):
        self.model.eval()
        return self

    def train(self):
        self.model.train()
        return self

    def parameters(self):
        yield torch.empty(0, dtype=getattr(torch, self.model.dtype.name))

    def __call__(self, x):
        return {"out": torch.from_numpy(self.model(x.numpy()))}
