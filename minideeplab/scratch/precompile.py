"""Compile the numba kernels once, into numba's on-disk cache, so that no notebook cell waits for a compiler.

numba compiles one specialisation per argument types (float32 or float64, number of dimensions, layout) on a
kernel's first call and, with ``cache=True``, keeps it in ``__pycache__`` beside the source file, keyed on that
file's path and modification time. ``precompile()`` calls the public functions that reach every kernel on tiny
inputs, in each dtype the course and the trainers use, so that each specialisation is compiled (or, when the
cache is warm, only loaded: about a second in all). ``make lab`` and ``make test`` run it after the set-up
(``minideeplab precompile``).

A kernel added later is reached by adding a call to ``_WARMUPS``; ``tests/test_precompile.py`` fails for a
kernel that precompile does not compile.
"""

from __future__ import annotations

import sys
import time

import numba
import numpy as np

from minideeplab.scratch import (attention, attention_fast, atrous_fast, crf, layers, lattice_fast, mobilenet,
                                 window_fast)

# Every module that defines numba kernels: precompile reports (and the test checks) the kernels of these;
# tests/test_precompile.py checks that no scratch module with a kernel is missing here.
KERNEL_MODULES = (atrous_fast, layers, lattice_fast, attention, attention_fast, mobilenet, window_fast)


def _conv_paths(dtype):
    """atrous_conv2d forward and backward along each of its paths, and conv2d_fused (eval unit)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 16, 16)).astype(dtype)
    cases = [
        dict(rate=1, stride=1, groups=1),  # im2col: few reads fall in the padding (8% at 16 x 16)
        dict(rate=3, stride=1, groups=1),  # stride 1, per-tap GEMMs on gathered columns
        dict(rate=3, stride=2, groups=1),  # any stride: gather, GEMM, scatter-add per tap
        dict(rate=2, stride=1, groups=2),  # depthwise
    ]
    for case in cases:
        w = rng.standard_normal((2, 2 // case["groups"], 3, 3)).astype(dtype)
        out = atrous_fast.atrous_conv2d(x, w, **case)
        atrous_fast.atrous_conv2d_backward(np.ones_like(out), x, w, **case)
        scale, shift = np.ones(2, dtype), np.zeros(2, dtype)
        atrous_fast.conv2d_fused(x, w, scale, shift, residual=out, relu=True, **case)


def _resize(dtype):
    layers.resize_bilinear_infer(np.zeros((1, 1, 3, 4), dtype), (5, 7), align_corners=False)


def _dense_crf(dtype):
    """The lattice works in float32 whatever the input; both kernels (position, bilateral), a compatibility."""
    probs = np.full((2, 4, 5), 0.5, dtype)
    image = np.zeros((4, 5, 3), np.uint8)
    crf.dense_crf(probs, image, n_iters=1)
    crf.dense_crf(probs, image, n_iters=1, compat=np.ones((2, 2)) - np.eye(2))


def _mean_field(dtype):
    """The CRF as a layer: mean field from logits and its backward, through the lattice (in the logits' dtype:
    float64 for the gradient checks) and through the local window (ConvCRF)."""
    logits = np.linspace(-1, 1, 2 * 4 * 5, dtype=dtype).reshape(2, 4, 5)
    image = np.zeros((4, 5, 3), np.uint8)
    for method in ("lattice", "window"):
        q, cache = crf.mean_field(logits, image, n_iters=1, method=method, window=3)
        crf.mean_field_backward(np.ones_like(q), cache)


def _mobilenet(dtype):
    """MobileNetV3's in-place hardswish (eval units)."""
    mobilenet._hardswish_inplace(np.zeros(3, dtype))


def _transformer(dtype):
    """LayerNorm, GELU (the fused float32 erf; the exact erf of gelu_naive), exp32 and attention, forward and
    backward."""
    x = np.linspace(-3, 3, 2 * 3 * 4, dtype=dtype).reshape(2, 3, 4)
    ones, zeros = np.ones(4, dtype), np.zeros(4, dtype)
    y, cache = attention.layer_norm(x, ones, zeros)
    attention.layer_norm_backward(y, cache)
    attention.gelu_backward(attention.gelu(x), x)
    attention.gelu_backward_naive(attention.gelu_naive(x), x)
    attention_fast.exp32_array(x)
    q = x.reshape(1, 2, 3, 4)
    out, cache = attention.attention(q, q, q)
    attention.attention_backward(out, cache)


_WARMUPS = (_conv_paths, _resize, _dense_crf, _mean_field, _mobilenet, _transformer)


def kernels() -> dict[str, object]:
    """{"module.name": dispatcher} of every numba kernel in KERNEL_MODULES (empty under NUMBA_DISABLE_JIT=1,
    where they are plain functions)."""
    found = {}
    for module in KERNEL_MODULES:
        for name, obj in vars(module).items():
            if isinstance(obj, numba.core.dispatcher.Dispatcher) and obj.py_func.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def precompile(dtypes=(np.float32, np.float64), quiet: bool = False) -> dict[str, int]:
    """Compile (or load from the cache) the kernels' specialisations for ``dtypes``; returns
    {"compiled": n, "loaded": n} over this process's first calls."""
    if numba.config.DISABLE_JIT:
        if not quiet:
            print("numba's JIT is disabled (NUMBA_DISABLE_JIT=1): nothing to compile")
        return {"compiled": 0, "loaded": 0}
    started = time.perf_counter()
    for warmup in _WARMUPS:
        for dtype in dtypes:
            warmup(dtype)
    stats = [k.stats for k in kernels().values()]
    counts = {"compiled": sum(sum(s.cache_misses.values()) for s in stats),
              "loaded": sum(sum(s.cache_hits.values()) for s in stats)}
    if not quiet:
        print(f"numba kernels: {counts['compiled']} specialisations compiled, {counts['loaded']} loaded from the "
              f"cache ({time.perf_counter() - started:.1f} s)")
        sys.stdout.flush()
    return counts
