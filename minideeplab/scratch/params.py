"""Parameter tools for the flat dicts every scratch network keeps: names, shapes, initialisation, checks.

A network's parameters are two dicts keyed by its PyTorch twin's ``state_dict`` names (``params``: conv
weights and biases, BN gamma and beta; ``buffers``: BN running statistics and ``num_batches_tracked``), so
real weights load by name. A unit's names sit below a ``prefix`` (``join``), and ``sub`` gives a unit
the entries below its prefix without copying them.
"""

from __future__ import annotations

import numpy as np

from minideeplab.specs.checks import FLOAT_DTYPES, names

__all__ = ["join", "sub", "bn_shapes", "conv_unit_shapes", "init_params", "check_subset"]


def join(prefix: str, name: str) -> str:
    """``prefix.name``, or ``name`` for an empty prefix."""
    return f"{prefix}.{name}" if prefix else name


def sub(d, prefix):
    """The entries below ``prefix.``, with the prefix cut off: the same arrays (in-place updates show)."""
    head = prefix + "."
    n = len(head)
    return {k[n:]: v for k, v in d.items() if k.startswith(head)}


def bn_shapes(params, buffers, name, c):
    params[f"{name}.weight"], params[f"{name}.bias"] = (c,), (c,)
    buffers.update({f"{name}.running_mean": (c,), f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})


def conv_unit_shapes(params, buffers, prefix, cin, cout, kernel, separable=False, conv="0", bn="1"):
    """Add the shapes of a conv-BN-ReLU unit to ``params``/``buffers``: conv ``prefix.conv`` (no bias;
    separable: ``.0`` depthwise (cin, 1, k, k), ``.1`` pointwise (cout, cin, 1, 1)), BN ``prefix.bn``."""
    c = join(prefix, conv)
    if separable:
        params[f"{c}.0.weight"] = (cin, 1, kernel, kernel)
        params[f"{c}.1.weight"] = (cout, cin, 1, 1)
    else:
        params[f"{c}.weight"] = (cout, cin, kernel, kernel)
    bn_shapes(params, buffers, join(prefix, bn), cout)


def init_params(shapes, buffer_shapes, rng, dtype=np.float32, fn="init_params", std=None):
    """Fresh arrays for the given shapes, as torchvision initialises: conv weights Kaiming normal, fan-out
    mode, std sqrt(2 / (Cout/groups * kh * kw)) (a depthwise kernel (C, 1, k, k) counts k * k), conv
    biases 0; BN weight 1, bias 0; running mean 0, var 1; num_batches_tracked 0 (int64). Transformer
    parameters as timm's ViT (normal, not truncated): linear weights (2-D) N(0, 0.02), biases 0; ``pos_embed``
    N(0, 0.02); ``cls_token`` N(0, 1e-6); LayerNorm weights (1-D ``.weight`` without BN statistics) 1.
    std: {conv weight name: std} drawn N(0, std) instead (DeepLab's class-score layers); the draws are
    the same ones, in the same order, only scaled differently."""
    std = {} if std is None else std
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{fn}: rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                         f"got {type(rng).__name__}")
    if np.dtype(dtype) not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: dtype must be float32 or float64, got {np.dtype(dtype)}")
    params = {}
    for name, shape in shapes.items():
        if len(shape) == 4:  # a conv weight
            depthwise = shape[1] == 1 and shape[2] > 1
            fan_out = (1 if depthwise else shape[0]) * shape[2] * shape[3]
            params[name] = (rng.standard_normal(shape) * std.get(name, np.sqrt(2.0 / fan_out))).astype(dtype)
        elif name.endswith(".weight") and name[:-len(".weight")] + ".running_mean" in buffer_shapes:
            params[name] = np.ones(shape, dtype=dtype)  # BN gamma
        elif len(shape) == 2 and name.endswith(".weight") or name.endswith("pos_embed"):
            params[name] = (rng.standard_normal(shape) * 0.02).astype(dtype)  # a linear layer's weight
        elif name.endswith("cls_token"):
            params[name] = (rng.standard_normal(shape) * 1e-6).astype(dtype)
        elif len(shape) == 1 and name.endswith(".weight"):
            params[name] = np.ones(shape, dtype=dtype)  # LayerNorm gamma
        else:
            params[name] = np.zeros(shape, dtype=dtype)  # BN beta, conv bias
    buffers = {}
    for name, shape in buffer_shapes.items():
        if name.endswith("num_batches_tracked"):
            buffers[name] = np.zeros((), dtype=np.int64)
        else:
            buffers[name] = (np.ones if name.endswith("running_var") else np.zeros)(shape, dtype=dtype)
    return params, buffers


def check_subset(fn, what, shapes, buffer_shapes, params, buffers, dtype, prefix=""):
    """The keys of ``shapes``/``buffer_shapes`` must be in params/buffers with those shapes and ``dtype``
    (num_batches_tracked: an integer 0-D array); keys below ``prefix`` that are not expected are an error
    too (all keys when the prefix is empty). Other keys (the rest of a model) are left alone."""
    below = (lambda k: k.startswith(prefix + ".")) if prefix else (lambda k: True)
    for kind, d, expected in (("params", params, shapes), ("buffers", buffers, buffer_shapes)):
        if not isinstance(d, dict):
            raise ValueError(f"{fn}: {kind} must be a dict of numpy arrays, got {type(d).__name__}")
        missing = [k for k in expected if k not in d]
        unexpected = [k for k in d if below(k) and k not in expected]
        if missing or unexpected:
            parts = ([f"missing {names(missing)}"] if missing else []) + (
                [f"unexpected {names(unexpected)}"] if unexpected else [])
            raise ValueError(f"{fn}: {kind} do not match {what}: {'; '.join(parts)}")
        for name, shape in expected.items():
            a = d[name]
            if not isinstance(a, np.ndarray):
                raise ValueError(f"{fn}: {kind}[{name!r}] must be a numpy array, got {type(a).__name__}")
            if a.shape != shape:
                raise ValueError(f"{fn}: {kind}[{name!r}] has shape {a.shape}, expected {shape} for {what}")
            if name.endswith("num_batches_tracked"):
                if not np.issubdtype(a.dtype, np.integer):
                    raise ValueError(f"{fn}: {kind}[{name!r}] has dtype {a.dtype}, expected an integer dtype")
            elif a.dtype != dtype:
                raise ValueError(f"{fn}: {kind}[{name!r}] has dtype {a.dtype} but x has dtype {np.dtype(dtype)}; "
                                 f"they must share one dtype (float32 or float64)")
