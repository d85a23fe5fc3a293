"""The trainers' optimisers (``TrainConfig.optimizer``), one registry entry each: torch's optimiser for the torch
trainer, its NumPy twin (``scratch.optim``) for the NumPy trainer, and the scratch state in torch's layout and
back, so that a checkpoint holds torch's ``state_dict`` whichever trainer wrote it (either resumes the other's run).

    sgd     DeepLab's recipe: SGD with momentum (TrainConfig.momentum) and L2 weight decay (through the gradient)
    adamw   the transformers' (ViT, SegFormer): Adam with betas (0.9, 0.999), eps 1e-8, and decoupled weight
            decay (TrainConfig.weight_decay; TrainConfig.momentum unused)

Both decay every parameter (biases, norms' weights, position embeddings too), as
``torch.optim.X(model.parameters())`` does; timm's ViT recipes exempt the one-dimensional ones, which needs two
parameter groups: not done here.
The learning rate's schedule (poly, an optional linear warm-up) is the loop's (``training.loop.scheduled_lr``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from minideeplab.scratch.optim import adamw_step, sgd_step

__all__ = ["Optimizer", "OPTIMIZERS", "get_optimizer", "to_torch_state", "from_torch_state"]

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults


class Optimizer(NamedTuple):
    """torch: (parameters, lr, momentum, weight_decay) -> a torch.optim.Optimizer. step: its scratch update,
    (params, grads, lr, momentum, weight_decay, state) -> state (AdamW ignores momentum). to_torch / from_torch:
    one parameter's scratch state <-> torch's."""

    name: str
    torch: Callable
    step: Callable
    to_torch: Callable
    from_torch: Callable


def _tensor(a):
    return torch.from_numpy(a.copy())


OPTIMIZERS = {
    "sgd": Optimizer(
        "sgd",
        lambda ps, lr, momentum, wd: torch.optim.SGD(ps, lr=lr, momentum=momentum, weight_decay=wd),
        sgd_step,
        lambda buf: {"momentum_buffer": _tensor(buf)},
        lambda s: s["momentum_buffer"].numpy().copy()),
    "adamw": Optimizer(
        "adamw",
        lambda ps, lr, momentum, wd: torch.optim.AdamW(ps, lr=lr, betas=BETAS, eps=EPS, weight_decay=wd),
        lambda p, g, lr, momentum, wd, s: adamw_step(p, g, lr, BETAS, EPS, wd, s),
        lambda s: {"step": torch.tensor(float(s["step"])), "exp_avg": _tensor(s["exp_avg"]),
                   "exp_avg_sq": _tensor(s["exp_avg_sq"])},
        lambda s: {"step": int(s["step"]), "exp_avg": s["exp_avg"].numpy().copy(),
                   "exp_avg_sq": s["exp_avg_sq"].numpy().copy()}),
}


def get_optimizer(name) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer (--optimizer) must be one of {', '.join(map(repr, OPTIMIZERS))}, got {name!r}")
    return OPTIMIZERS[name]


def to_torch_state(config, state: dict, names: list, lr: float) -> dict:
    """The scratch state (name -> one parameter's state) as torch's optimizer.state_dict() over the parameters
    ``names`` in order (parameter i: names[i]), its one group's hyper-parameters (config's, at lr) as torch
    writes them."""
    opt = get_optimizer(config.optimizer)
    template = opt.torch([torch.zeros(0, requires_grad=True) for _ in names], lr, config.momentum,
                         config.weight_decay).state_dict()
    return {"state": {i: opt.to_torch(state[k]) for i, k in enumerate(names) if k in state},
            "param_groups": template["param_groups"]}


def from_torch_state(config, state_dict: dict, names: list) -> dict:
    """``to_torch_state``'s inverse: torch's optimizer.state_dict() -> name -> the scratch state."""
    opt = get_optimizer(config.optimizer)
    return {names[i]: opt.from_torch(s) for i, s in state_dict["state"].items()}
