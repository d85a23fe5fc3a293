"""The optimiser: ``torch.optim.SGD``'s update, in NumPy, on the flat parameter dicts of the scratch models."""

from __future__ import annotations

import numpy as np

from minideeplab.specs.checks import check_real, names

__all__ = ["sgd_step"]


def sgd_step(params, grads, lr, momentum=0.0, weight_decay=0.0, state=None):
    """One step of ``torch.optim.SGD(lr, momentum, weight_decay)`` (dampening 0, no Nesterov), in place:

        d = grad + weight_decay * p
        buf = d on the first step, else momentum * buf + d          (with momentum > 0)
        p -= lr * buf   (or lr * d without momentum)

    params, grads: dicts of arrays; every key of grads is updated (a key missing from grads is left
    alone, as torch skips a parameter whose grad is None). state: the momentum buffers, name -> array,
    from the previous call (None or {} on the first). Returns the state.
    """
    fn = "sgd_step"
    for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
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
