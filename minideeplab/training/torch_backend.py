"""The torch trainer's step and state: the reference (PyTorch) DeepLab, ``torch.optim.SGD`` (or AdamW,
``training.optimizers``), autograd, and what data parallel needs of them.

One step: the mean cross-entropy (ignoring label 255) over the global batch's labelled pixels, plus
AUX_WEIGHT times the aux head's, if the model has one; backward; SGD with momentum and weight decay at the
loop's learning rate (or AdamW). Dropout draws from torch's generator, whose state the checkpoint keeps ("rng").

Data parallel (under torchrun, see ``training.loop``): the model runs in DistributedDataParallel. Each
process's loss is its pixels' share of the global batch's mean (as DDP averages the processes' gradients),
and batch norm sees the whole global batch: nn.SyncBatchNorm on GPUs; torch 2.14 has no CPU SyncBatchNorm
(nn.SyncBatchNorm raises "SyncBatchNorm expected input tensor to be on GPU" and its kernels,
aten::batch_norm_stats and friends, are CUDA-only; pytorch PR #78078, which would have added them, was
closed unmerged), so on the CPU the statistics are summed over the processes with a differentiable
all_reduce (``CPUSyncBatchNorm``). The checkpoint holds the plain model's state_dict, so a run may resume
with another number of processes (same data and schedule; the rounding and the dropout draws differ).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from minideeplab.data.transforms import IGNORE_INDEX
from minideeplab.training.optimizers import get_optimizer

AUX_WEIGHT = 0.5  # torchvision's reference scripts: loss = out + 0.5 aux


def build(config, num_classes: int, device=None):
    """The model of a TrainConfig (with its model_options), in train mode, on device (default:
    config.device), in config.dtype."""
    from minideeplab.reference.deeplab import build_model

    model = build_model(config.model, config.backbone, config.output_stride, num_classes, **config.model_options)
    return model.to(device=device or config.device, dtype=getattr(torch, config.dtype))


class TorchBackend:
    """The torch trainer's side of ``training.loop.fit``: TorchBackend(config, num_classes, world, rank,
    device) builds the model with ``build`` (or the function given: (config, num_classes, device) -> model)
    from torch.manual_seed(config.seed), and its optimizer; process `rank` > 0 then reseeds torch's generator,
    for dropout draws of its own."""

    name = "torch"

    @staticmethod
    def check(config, world):
        """Nothing to refuse: any device, any number of processes."""

    def __init__(self, config, num_classes: int, world: int = 1, rank: int = 0, device: str = "cpu", build=build):
        self.config, self.world, self.rank, self.device = config, world, rank, device
        self.dtype = getattr(torch, config.dtype)
        torch.manual_seed(config.seed)
        self.net = build(config, num_classes, device)  # the model; self.model runs it (through DDP under torchrun)
        if world > 1:
            self.net = _sync_batchnorm(self.net, device)
        self.optimizer = get_optimizer(config.optimizer).torch(self.net.parameters(), config.lr, config.momentum,
                                                               config.weight_decay)
        if rank:
            torch.manual_seed(_rank_seed(config.seed, rank, 0))
        self.model = self.net
        if world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[torch.cuda.current_device()] if device.startswith("cuda") else None)

    def step(self, x, y, lr: float, iteration: int) -> float:
        """One optimiser iteration on this process's share of a batch, x (n, 3, H, W) float32 and y (n, H, W) int64
        tensors, at learning rate lr -> the global batch's loss. (iteration: unused, dropout draws from torch's
        generator.)"""
        x, y = x.to(device=self.device, dtype=self.dtype), y.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # the mean over the global batch's labelled pixels: each process's sum over its own, divided by that
        # count / world, as DDP averages the processes' gradients
        valid = (y != IGNORE_INDEX).sum()
        if self.world > 1:
            dist.all_reduce(valid)
        result = self.model(x)
        loss = F.cross_entropy(result["out"], y, ignore_index=IGNORE_INDEX, reduction="sum")
        if "aux" in result:
            loss = loss + AUX_WEIGHT * F.cross_entropy(result["aux"], y, ignore_index=IGNORE_INDEX, reduction="sum")
        loss = loss / (valid / self.world)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = loss.detach()
        if self.world > 1:
            dist.all_reduce(value)
        return value.item() / self.world

    def state_dict(self) -> dict:
        """{"model": the plain model's state_dict on the CPU, "optimizer": the optimiser's, "rng": torch's generator
        states}."""
        return {"model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "rng": _rng_state(self.device)}

    def load_state_dict(self, ckpt: dict):
        """Continue from a checkpoint (either trainer's, any number of processes). Its generator states, if
        it holds one per process of this run (or this is rank 0); else this rank's seed at its iteration."""
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        states = ckpt["rng"].get("ranks") or [ckpt["rng"]]
        if len(states) == self.world or self.rank == 0:
            _set_rng(states[self.rank if len(states) == self.world else 0], self.device)
        else:
            torch.manual_seed(_rank_seed(self.config.seed, self.rank, ckpt["iteration"]))

    def load_weights(self, model: dict):
        """--init-from: these weights (a full state_dict), nothing else."""
        self.net.load_state_dict(model)

    def predictor(self):
        """The plain model, for ``evaluation.predict`` (which puts it in eval mode; .train() after)."""
        return self.net


# ---------------------------------------------------------------------------------------------- data parallel


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
