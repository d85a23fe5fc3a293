"""The local-window CRF's message in numba (see ``crf.WindowFilter``): one pass over the pixels, each reading its
k x k window, instead of k*k passes over the image. Serial loops over columns inside a parallel loop over rows;
plain loops only, so that NUMBA_DISABLE_JIT=1 runs them as Python."""

from __future__ import annotations

import numba
import numpy as np
from numba import prange


@numba.njit(cache=True, parallel=True)
def window_message(values, weights, out):
    """out[y, x] += sum over the window's offsets o = (dy, dx) of weights[o, y, x] * values[y + dy, x + dx].
    values, out (H, W, C); weights (k*k, H, W), offsets in row-major order, zero where the window leaves
    the image."""
    H, W, C = values.shape
    k = int(np.sqrt(weights.shape[0]) + 0.5)
    r = k // 2
    for y in prange(H):
        for i in range(k):
            yy = y + i - r
            if yy < 0 or yy >= H:
                continue
            for x in range(W):
                for j in range(k):
                    xx = x + j - r
                    if xx < 0 or xx >= W:
                        continue
                    w = weights[i * k + j, y, x]
                    for c in range(C):
                        out[y, x, c] += w * values[yy, xx, c]
