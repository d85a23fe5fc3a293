"""The optimisers: ``torch.optim.SGD``'s and ``torch.optim.AdamW``'s updates, in NumPy, on the flat parameter dicts
of the scratch models. SGD with momentum is DeepLab's recipe; AdamW (Adam with decoupled weight decay) is the
transformers' (ViT, SegFormer)."""

from __future__ import annotations

import numpy as np

from minideeplab.specs.checks import check_real, names

__all__ = ["sgd_step", "adamw_step"]


def sgd_step(params, grads, lr, momentum=0.0, weight_decay=0.0, state=None):
    """One step of ``torch.optim.SGD(lr, momentum, weight_decay)`` (dampening 0, no Nesterov), in place:

        d = grad + weight_decay * p
        buf = d on the first step, else momentum * buf + d          (with momentum > 0)
        p -= lr * buf   (or lr * d without momentum)

    params, grads: dicts of arrays; every key of grads is updated (a key missing from grads is left
    alone, as torch skips a parameter whose grad is None). state: the momentum buffers, name -> array,
    from the previous call (None or {} on the first). Returns the state.
    """
    state = _check("sgd_step", params, grads, state, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for k, g in grads.items():
        p = params[k]
        t = p.dtype.type
        d = g + t(weight_decay) * p if weight_decay != 0 else g
        if momentum != 0:
            buf = state.get(k)
            if buf is None:
                buf = np.array(d, copy=True)
            else:
                buf *= t(momentum)
                buf += d
            state[k] = buf
            d = buf
        p -= t(lr) * d
    return state


def adamw_step(params, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, state=None):
    """One step of ``torch.optim.AdamW(lr, betas, eps, weight_decay)`` (no amsgrad), in place; for each key
    of grads, with t the key's step count (1 on its first step):

        p *= 1 - lr * weight_decay                        (decoupled: the decay does not pass through m, v)
        m = beta1 * m + (1 - beta1) * grad                (m, v: zeros before the first step)
        v = beta2 * v + (1 - beta2) * grad**2
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    The bias corrections undo the zero start of m and v: without them the first steps would be far too
    small (m is (1 - beta1) grad after one step). state: name -> {"step", "exp_avg" (m), "exp_avg_sq" (v)},
    torch's names, from the previous call (None or {} on the first). Returns the state."""
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"adamw_step: betas must be a pair (beta1, beta2), got {betas!r}")
    state = _check("adamw_step", params, grads, state, lr=lr, eps=eps, weight_decay=weight_decay,
                   beta1=betas[0], beta2=betas[1])
    b1, b2 = (float(b) for b in betas)
    if not (b1 < 1 and b2 < 1):
        raise ValueError(f"adamw_step: betas must be in [0, 1), got {betas!r}")
    for k, g in grads.items():
        p = params[k]
        t = p.dtype.type
        s = state.get(k)
        if s is None:
            s = state[k] = {"step": 0, "exp_avg": np.zeros_like(p), "exp_avg_sq": np.zeros_like(p)}
        s["step"] += 1
        m, v, n = s["exp_avg"], s["exp_avg_sq"], s["step"]
        if weight_decay != 0:
            p *= t(1 - lr * weight_decay)
        m *= t(b1)
        m += t(1 - b1) * g
        v *= t(b2)
        v += t(1 - b2) * g * g
        denom = np.sqrt(v) / t(np.sqrt(1 - b2 ** n))
        denom += t(eps)
        p -= t(lr / (1 - b1 ** n)) * m / denom
    return state


def _check(fn, params, grads, state, **hyper):
    """The arguments every step checks; returns the state ({} for None)."""
    for name, v in hyper.items():
        check_real(fn, name, v, 0)
    if not isinstance(params, dict) or not isinstance(grads, dict):
        raise ValueError(f"{fn}: params and grads must be dicts of numpy arrays, got "
                         f"{type(params).__name__} and {type(grads).__name__}")
    state = {} if state is None else state
    if not isinstance(state, dict):
        raise ValueError(f"{fn}: state must be None or the dict returned by the previous step, got {type(state).__name__}")
    unknown = [k for k in grads if k not in params]
    if unknown:
        raise ValueError(f"{fn}: grads has keys that are not in params: {names(unknown)}")
    for k, g in grads.items():
        p = params[k]
        if not isinstance(g, np.ndarray) or g.shape != p.shape or g.dtype != p.dtype:
            got = f"{g.shape} {g.dtype}" if isinstance(g, np.ndarray) else type(g).__name__
            raise ValueError(f"{fn}: grads[{k!r}] is {got}, expected {p.shape} {p.dtype} like params[{k!r}]")
    return state
