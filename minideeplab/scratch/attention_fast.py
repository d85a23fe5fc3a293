"""The transformer layers' elementwise and per-token passes fused (numba), beside the readable NumPy versions in
``minideeplab.scratch.attention`` (``layer_norm_naive``, ``gelu_naive``, ``softmax``, ...), which compute the same
numbers.

What the fast versions save (``minideeplab bench attention`` measures it against torch):

* exp in float32 that numba can vectorise (``exp32``): numba has no vector exp without Intel's SVML (absent
  here) and a scalar expf per element ran 5x slower than NumPy's exp. exp(x) = 2^n 2^f with n = round(x log2 e)
  (the reduction in float64, so that f keeps its bits at any |x|), 2^f, |f| <= 1/2, by a degree-6 polynomial
  fitted at import (least squares at Chebyshev nodes, near-minimax), 2^n written straight into a float's exponent
  bits. Relative error <= 1.1e-7 over [-87.3, 88] (NumPy's float32 exp: 2.1e-7); below -87.3 it is 0 (as is
  exp(-inf)), above 88 inf. Fusing the exp into the loops that use it saves the passes and the temporaries of its
  size (a fresh array is a fresh page fault per 4 KiB: see ``scratch.runtime``).
* the softmax, in place: the rows' maxima (NumPy), then one kernel a row: exp(scale (s - max)), the sum, the
  division.
* LayerNorm: one pass a token computing mean, variance, x_hat and y (NumPy: seven passes and four temporaries),
  and one for the backward's dx.
* GELU (erf), float32: erf is Abramowitz and Stegun's 7.1.26, erf(z) = 1 - t (a1 + t (a2 + ... a5 t)) e^{-z^2},
  t = 1 / (1 + p |z|), |error| <= 1.5e-7: what torch's vectorised CPU erf evaluates too, in one loop with its
  exponential e^{-x^2/2}. GELU's derivative Phi(x) + x phi(x) reuses the same exponential, phi(x) =
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
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

__all__ = ["exp32", "exp32_array", "softmax_rows", "layer_norm_rows", "layer_norm_rows_backward", "gelu_erf32",
           "gelu_erf32_backward", "softmax_backward_rows"]


# ---------------------------------------------------------------------------------------------
# exp, float32, vectorisable


def _exp2_coefficients(degree=6):
    """2^f on [-1/2, 1/2]: a least-squares polynomial at 256 Chebyshev nodes (float64), lowest power first."""
    f = 0.5 * np.cos(np.pi * (np.arange(256) + 0.5) / 256)
    return tuple(np.float32(c) for c in np.polynomial.polynomial.polyfit(f, 2.0 ** f, degree))


_EXP2_C = _exp2_coefficients()
_LOG2E = math.log2(math.e)
_EXP_LO = np.float32(-87.3)  # exp(-87.3) = 1.2e-38, the smallest normal float32's neighbourhood
_EXP_HI = np.float32(88.0)   # n = round(x log2 e) <= 127, the largest exponent
# fastmath without "nnan" and "ninf": exp32(-inf) must stay 0 (a masked key), which those flags would let LLVM break
_FAST = {"reassoc", "nsz", "arcp", "contract", "afn"}


if numba.config.DISABLE_JIT:  # stepping through in Python: the same bits through NumPy's view
    def _float32_from_bits(bits):
        return np.int32(bits).view(np.float32)
else:
    @intrinsic
    def _float32_from_bits(typingctx, bits):
        """An int32's bits read as a float32 (C's memcpy, LLVM's bitcast: no instruction)."""
        if bits != types.int32:
            return None
        return types.float32(types.int32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.FloatType())


@numba.njit(cache=True, inline="always", fastmath=_FAST)
def exp32(x):
    """exp(x) of a float32 x, as a float32: 0 below -87.3 (and at -inf), inf above 88 (exp(88) = 1.7e38)."""
    t = np.float64(max(x, _EXP_LO)) * _LOG2E
    n = np.floor(t + 0.5)  # -126 .. 127: a normal float's exponent
    f = np.float32(t - n)
    c0, c1, c2, c3, c4, c5, c6 = _EXP2_C
    two_f = c0 + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * c6)))))
    two_n = _float32_from_bits(np.int32((n + 127.0) * 8388608.0))  # (n + 127) << 23: the biased exponent
    if x > _EXP_HI:
        return np.float32(np.inf)
    return two_f * two_n if x >= _EXP_LO else np.float32(0)


@numba.njit(cache=True, parallel=True, fastmath=_FAST)
def _exp32_kernel(x, y):
    for i in numba.prange(x.size):
        y[i] = exp32(x[i])


def exp32_array(x):
    """exp elementwise of a float32 array (``exp32``): what the fused kernels below compute inline."""
    x1 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    y = np.empty_like(x1)
    _exp32_kernel(x1, y)
    return y.reshape(np.shape(x))


@numba.njit(cache=True, parallel=True, fastmath=_FAST)
def _softmax32_kernel(s, m, scale):
    n, K = s.shape
    for r in numba.prange(n):
        row, shift = s[r], m[r]
        total = np.float32(0)
        for j in range(K):
            e = exp32(scale * (row[j] - shift))
            row[j] = e
            total += e
        inv = np.float32(1) / total
        for j in range(K):
            row[j] *= inv


def softmax_rows(s, scale):
    """s (n, K) float32 C-contiguous, in place: each row <- softmax(scale * row), the row's maximum shifted out
    first (a -inf entry, a masked key, gives 0); returns s."""
    # the maxima by NumPy: numba does not vectorise a max reduction (its max keeps NaN's semantics), NumPy does
    _softmax32_kernel(s, s.max(axis=1), np.float32(scale))
    return s

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
@numba.njit(cache=True, parallel=True, fastmath=_FAST)
def _gelu32_kernel(x, y):
    a1, a2, a3, a4, a5 = _A32
    one, half = np.float32(1), np.float32(0.5)
    for i in numba.prange(x.size):
        v = x[i]
        t = one / (one + _P32 * abs(v))
        # (1 - erf(|x| / sqrt 2)) / 2, then x Phi(x)
        tail = half * t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * exp32(-half * v * v)
        y[i] = v * (half + math.copysign(half - tail, v))


@numba.njit(cache=True, parallel=True, fastmath=_FAST)
def _gelu32_backward_kernel(dy, x, dx):
    a1, a2, a3, a4, a5 = _A32
    one, half = np.float32(1), np.float32(0.5)
    for i in numba.prange(x.size):
        v = x[i]
        e = exp32(-half * v * v)
        t = one / (one + _P32 * abs(v))
        tail = half * t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * e
        dx[i] = dy[i] * (half + math.copysign(half - tail, v) + v * _PDF32 * e)  # dy (Phi(x) + x phi(x))


def gelu_erf32(x):
    """x float32 (any shape) -> x Phi(x), the erf form (A&S 7.1.26)."""
    x1 = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(x1)
    _gelu32_kernel(x1, y)
    return y.reshape(x.shape)


def gelu_erf32_backward(dy, x):
    """dy, x float32 (one shape) -> dy (Phi(x) + x phi(x))."""
    x1, d1 = np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(dy).reshape(-1)
    dx = np.empty_like(x1)
    _gelu32_backward_kernel(d1, x1, dx)
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
