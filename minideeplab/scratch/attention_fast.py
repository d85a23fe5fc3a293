"""The transformer layers' elementwise and per-token passes fused (numba), beside the readable NumPy versions in
``minideeplab.scratch.attention`` (``layer_norm_naive``, ``gelu_naive``, ...), which compute the same numbers.

What the fast versions save (``minideeplab bench attention`` measures it against torch):

* LayerNorm: one pass a token computing mean, variance, x_hat and y (NumPy: seven passes and four temporaries),
  and one for the backward's dx.
* GELU (erf), float32: erf is Abramowitz and Stegun's 7.1.26, erf(z) = 1 - t (a1 + t (a2 + ... a5 t)) e^{-z^2},
  t = 1 / (1 + p |z|), |error| <= 1.5e-7: what torch's vectorised CPU erf evaluates too. The exponential, e^{-x^2/2}, is NumPy's (vectorised); the rest is one fused
  loop (numba vectorises it). GELU's derivative Phi(x) + x phi(x) reuses the same exponential, phi(x) =
  e^{-x^2/2} / sqrt(2 pi). float64 keeps the exact erf (math.erf): float64 is for gradient checks.
* the softmax's backward, p (dp - sum(dp p)) per row, in one kernel, in place.

Kernels take C-contiguous 1-D or 2-D arrays and run their elements or rows in parallel (``numba.prange``), with
``fastmath`` (sums reassociated, so vectorised); each dtype is one specialisation (``minideeplab precompile``
compiles them).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["layer_norm_rows", "layer_norm_rows_backward", "gelu_erf32", "gelu_erf32_backward", "softmax_backward_rows"]

# Abramowitz and Stegun 7.1.26
_P, _A1, _A2, _A3, _A4, _A5 = 0.3275911, 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429


@numba.njit(cache=True, parallel=True, fastmath=True)
def _layer_norm_kernel(x, gamma, beta, eps, y, xhat, inv):
    n, D = x.shape
    for r in numba.prange(n):
        mean = x.dtype.type(0)
        for j in range(D):
            mean += x[r, j]
        mean /= D
        var = x.dtype.type(0)
        for j in range(D):
            c = x[r, j] - mean
            var += c * c
        s = x.dtype.type(1) / math.sqrt(var / D + eps)
        inv[r] = s
        for j in range(D):
            h = (x[r, j] - mean) * s
            xhat[r, j] = h
            y[r, j] = h * gamma[j] + beta[j]


@numba.njit(cache=True, parallel=True, fastmath=True)
def _layer_norm_backward_kernel(dy, xhat, inv, gamma, dx):
    n, D = dy.shape
    for r in numba.prange(n):
        mg = dy.dtype.type(0)
        mgx = dy.dtype.type(0)
        for j in range(D):
            g = dy[r, j] * gamma[j]
            mg += g
            mgx += g * xhat[r, j]
        mg /= D
        mgx /= D
        s = inv[r]
        for j in range(D):
            dx[r, j] = s * (dy[r, j] * gamma[j] - mg - xhat[r, j] * mgx)


def layer_norm_rows(x, gamma, beta, eps):
    """x (n, D) C-contiguous -> (y, xhat, inv (n,)): LayerNorm over each row, the biased variance."""
    y, xhat, inv = np.empty_like(x), np.empty_like(x), np.empty(x.shape[0], x.dtype)
    _layer_norm_kernel(x, gamma, beta, x.dtype.type(eps), y, xhat, inv)
    return y, xhat, inv


def layer_norm_rows_backward(dy, xhat, inv, gamma):
    """dy, xhat (n, D) C-contiguous, inv (n,) -> dx (n, D)."""
    dx = np.empty_like(dy)
    _layer_norm_backward_kernel(dy, xhat, inv, gamma, dx)
    return dx


_P32 = np.float32(_P / math.sqrt(2.0))  # t's p for z = x / sqrt 2
_A32 = tuple(np.float32(a) for a in (_A1, _A2, _A3, _A4, _A5))
_PDF32 = np.float32(1 / math.sqrt(2 * math.pi))


# prange over the elements themselves: numba then knows that the arrays do not overlap and vectorises the loop
# (a plain range loop here ran 6x slower, measured)
@numba.njit(cache=True, parallel=True, fastmath=True)
def _gelu32_kernel(x, e, y):
    a1, a2, a3, a4, a5 = _A32
    one, half = np.float32(1), np.float32(0.5)
    for i in numba.prange(x.size):
        v = x[i]
        t = one / (one + _P32 * abs(v))
        tail = half * t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * e[i]  # (1 - erf(|x| / sqrt 2)) / 2
        y[i] = v * (half + math.copysign(half - tail, v))                       # x Phi(x)


@numba.njit(cache=True, parallel=True, fastmath=True)
def _gelu32_backward_kernel(dy, x, e, dx):
    a1, a2, a3, a4, a5 = _A32
    one, half = np.float32(1), np.float32(0.5)
    for i in numba.prange(x.size):
        v = x[i]
        t = one / (one + _P32 * abs(v))
        tail = half * t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * e[i]
        dx[i] = dy[i] * (half + math.copysign(half - tail, v) + v * _PDF32 * e[i])  # dy (Phi(x) + x phi(x))


def _exp_half_square(x):
    e = np.multiply(x, x)
    e *= np.float32(-0.5)
    return np.exp(e, out=e)


def gelu_erf32(x):
    """x float32 (any shape) -> x Phi(x), the erf form (A&S 7.1.26)."""
    x1 = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(x1)
    _gelu32_kernel(x1, _exp_half_square(x1), y)
    return y.reshape(x.shape)


def gelu_erf32_backward(dy, x):
    """dy, x float32 (one shape) -> dy (Phi(x) + x phi(x))."""
    x1, d1 = np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(dy).reshape(-1)
    dx = np.empty_like(x1)
    _gelu32_backward_kernel(d1, x1, _exp_half_square(x1), dx)
    return dx.reshape(x.shape)


@numba.njit(cache=True, parallel=True, fastmath=True)
def _softmax_backward_kernel(p, dp, scale):
    n, K = p.shape
    for r in numba.prange(n):
        s = dp.dtype.type(0)
        for j in range(K):
            s += dp[r, j] * p[r, j]
        for j in range(K):
            dp[r, j] = p[r, j] * (dp[r, j] - s) * scale


def softmax_backward_rows(p, dp, scale):
    """p, dp (n, K) C-contiguous: dp <- scale * p (dp - sum_k dp p) in place (the softmax's backward, times the
    scores' scale); returns dp."""
    _softmax_backward_kernel(p, dp, dp.dtype.type(scale))
    return dp
