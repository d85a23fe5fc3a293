"""The fully-connected CRF of Kraehenbuehl and Koltun (2011), as DeepLab v1/v2 use it to sharpen boundaries.

Energy over labellings x of the N pixels, with unary U_i = -log P_i from the network:

    E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) sum_m w_m k_m(f_i, f_j)

with two Gaussian kernels on pixel positions p and colours I (RGB, 0..255):

    appearance  k_1 = exp(-|p_i - p_j|^2 / 2 bi_xy_std^2 - |I_i - I_j|^2 / 2 bi_rgb_std^2)    weight bi_w
    smoothness  k_2 = exp(-|p_i - p_j|^2 / 2 pos_xy_std^2)                                      weight pos_w

Mean-field inference keeps a factorised Q_i(l) and updates every pixel in parallel:

    Q_i(l)  <-  softmax_l( -U_i(l) - sum_l' mu(l, l') sum_m w_m (K~_m Q)_i(l') )

where K~_m is the kernel matrix, normalised. With the Potts model mu = 1 - I the message is, up to a
per-pixel constant that the softmax removes, +sum_m w_m (K~_m Q)_i(l): a pixel is pulled towards the
labels of the pixels that look like it and sit near it.

Three ways to compute K~ Q:

* ``method="exact"``: the N x N kernel, O(N^2) per iteration, in chunks. For small images and for teaching.
* ``method="lattice"``: the permutohedral lattice (Adams et al. 2010). Splat each pixel's values onto the
  d+1 vertices of the simplex around its feature vector, blur along the lattice's d+1 directions, slice
  back: O(N d) per iteration. The readable steps are ``build_lattice``, ``lattice_splat``,
  ``lattice_blur`` and ``lattice_slice`` below; ``dense_crf`` runs the fused numba versions from
  ``lattice_fast.py`` on both cores.
* ``method="window"``: messages only within a k x k window around each pixel (the Convolutional CRF of
  Teichmann and Cipolla, 2018): an unfold times a per-pixel Gaussian, O(N k^2) per iteration. Exact
  within the window, blind beyond it. ``window_kernel`` and ``window_message_naive`` are the readable
  steps, ``window_fast.window_message`` the fused one. ``minideeplab bench crf --window`` measures it.

Conventions, chosen to agree with pydensecrf (the C++ library DeepLab's releases used):

* the kernel includes the pixel itself (k(f_i, f_i) = 1), as the lattice cannot leave it out;
* features are (x/xy_std, y/xy_std[, r/rgb_std, g/rgb_std, b/rgb_std]), x the column;
* ``normalization="symmetric"`` (default, pydensecrf's default) uses D^-1/2 K D^-1/2 with D = diag(K 1);
  ``"after"`` uses D^-1 K, the per-pixel normalisation of the NIPS'11 paper, which DeepLab's code used.
  The lattice is normalised by its own response to ones: its raw output underestimates the exact sum,
  and by different amounts in different places (about 0.85x in 2-D, 0.6-0.7x in 5-D);
* probabilities are floored at 1e-5 before the log, as ``pydensecrf.utils.unary_from_softmax`` does.

Speed: on 2 cores, 375x500 with 21 labels and 10 iterations takes 0.3-0.7 s, faster than pydensecrf
(``minideeplab bench crf``). When another program keeps a core busy, numba's OpenMP threads spin while
they wait for each other and the same call takes 2-3 times longer; ``OMP_WAIT_POLICY=PASSIVE`` in the
environment (set before Python starts) avoids it: measured 1.1 s instead of 2.0 s beside a busy process.

The CRF as a layer (CRF-as-RNN's idea): ``mean_field`` runs the same iterations from logits and keeps each
iteration's Q; ``mean_field_backward`` takes dLoss/dQ back through them to the logits, the two kernel weights
and the compatibility matrix. Through the lattice that needs the filter's transpose (``LatticeFilter``):
splat with the slice weights, blur the directions in reverse order, slice with the splat weights.

``compat`` is the label compatibility mu as in the paper (a penalty: 0 on the diagonal for Potts), shared by
both kernels. pydensecrf's matrix ``compat=`` is the same penalty per kernel, symmetrised ((mu + mu^T)/2),
so ours with a symmetric mu equals pydensecrf's with compat = w_m * mu for kernel m; its scalar ``compat=w``
(Potts) is a reward, the same as w * (1 - I) here.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import numba
import numpy as np

from minideeplab.scratch import lattice_fast as fast
from minideeplab.scratch import window_fast
from minideeplab.specs.conv import shifted_overlap

PROB_FLOOR = 1e-5
NORMALIZATIONS = ("symmetric", "after")
METHODS = ("lattice", "exact", "window")
EXACT_MAX_PIXELS = 16_384  # 128 x 128; time grows as N^2 (96 x 96 took 6.6 s per iteration on a busy machine)
MAX_FEATURE = 1e5  # largest |feature| (position / xy_std, colour / rgb_std) the float32 lattice handles exactly
# Parameter sets in use. DeepLab v2's from its released prototxts; the README example of pydensecrf.
PARAMETER_SETS = {
    "deeplab-v2-resnet": dict(pos_w=3.0, pos_xy_std=1.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0),
    "deeplab-v2-vgg": dict(pos_w=3.0, pos_xy_std=3.0, bi_w=4.0, bi_xy_std=49.0, bi_rgb_std=5.0),
    "pydensecrf-readme": dict(pos_w=3.0, pos_xy_std=3.0, bi_w=10.0, bi_xy_std=80.0, bi_rgb_std=13.0),
}
PARALLEL_MIN_PIXELS = 40_000  # below this the lattice runs on one thread (see _threads_for)
_EXACT_CHUNK_ENTRIES = 2**24  # kernel entries held at once by the exact method (128 MiB in float64)
_EXACT_CACHE_PIXELS = 4096  # up to here the exact method keeps the N x N matrix (128 MiB in float64)


# ---------------------------------------------------------------------------------------------
# features and the exact kernel


def pixel_features(image: np.ndarray, xy_std: float, rgb_std: float | None = None,
                   dtype=np.float64) -> np.ndarray:
    """(H, W, 3) image -> (H*W, 2) features (x/xy_std, y/xy_std), or (H*W, 5) with the colours
    (r, g, b)/rgb_std appended when rgb_std is given. Pixels in row-major order."""
    H, W = image.shape[:2]
    y, x = np.mgrid[0:H, 0:W].astype(dtype)
    cols = [x.ravel() / dtype(xy_std), y.ravel() / dtype(xy_std)]
    if rgb_std is not None:
        rgb = image.reshape(H * W, 3).astype(dtype) / dtype(rgb_std)
        cols += [rgb[:, 0], rgb[:, 1], rgb[:, 2]]
    return np.stack(cols, axis=1)


def gaussian_kernel(features: np.ndarray) -> np.ndarray:
    """(N, d) features -> (N, N) matrix K[i, j] = exp(-|f_i - f_j|^2 / 2), self term included."""
    sq = np.sum(features**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * features @ features.T, 0.0)
    return np.exp(-0.5 * d2)


def normalize_kernel(kernel: np.ndarray, normalization: str = "symmetric") -> np.ndarray:
    """K -> D^-1/2 K D^-1/2 ("symmetric") or D^-1 K ("after"), with D = diag(K 1)."""
    _check_choice("normalize_kernel", "normalization", normalization, NORMALIZATIONS)
    norm = kernel.sum(axis=1)
    if normalization == "symmetric":
        s = 1.0 / np.sqrt(norm)
        return s[:, None] * kernel * s[None, :]
    return kernel / norm[:, None]


def mean_field_update(q: np.ndarray, unary: np.ndarray, kernels, weights, compat=None) -> np.ndarray:
    """One parallel mean-field step. q, unary: (C, N); kernels: normalised (N, N) matrices; weights: one
    per kernel; compat: (C, C) penalty mu or None for Potts. -> new q, (C, N), each column sums to 1."""
    message = sum(w * (q @ k.T) for w, k in zip(weights, kernels))  # (C, N): sum_m w_m (K_m Q)
    energy = -unary + message if compat is None else -unary - compat @ message
    energy = energy - energy.max(axis=0, keepdims=True)
    e = np.exp(energy)
    return e / e.sum(axis=0, keepdims=True)


def mean_field_update_backward(dq_new, q, unary, kernels, weights, compat):
    """The backward of ``mean_field_update(q, unary, kernels, weights, compat)`` for a (C, C) penalty compat
    (Potts is 1 - I), written out for reading: ``mean_field_backward`` runs these steps, pixel-major, for each
    iteration. dq_new: dLoss/d(new q), (C, N). With m = sum_k w_k q K_k^T, z = -unary - compat m, q' = softmax(z):

        dz = q' * (dq' - sum_l dq' q')        dm = -compat^T dz         dcompat = -dz m^T
        dq = sum_k w_k dm K_k                 dw_k = <dm, q K_k^T>      dunary = -dz

    -> (dunary (C, N), dq (C, N), dweights (len(kernels),), dcompat (C, C)). K_k, not K_k^T, multiplies dm: the
    same matrix for the symmetric normalisation, a different one for D^-1 K."""
    compat = np.asarray(compat, dtype=q.dtype)
    messages = [q @ k.T for k in kernels]                           # (C, N) each: K_k applied to q
    m = sum(w * mk for w, mk in zip(weights, messages))
    q_new = mean_field_update(q, unary, kernels, weights, compat)
    dz = q_new * (dq_new - np.sum(dq_new * q_new, axis=0, keepdims=True))
    dm = -(compat.T @ dz)
    dq = sum(w * (dm @ k) for w, k in zip(weights, kernels))
    dweights = np.array([np.sum(dm * mk) for mk in messages], dtype=q.dtype)
    return -dz, dq, dweights, -(dz @ m.T)


# ---------------------------------------------------------------------------------------------
# the permutohedral lattice, readable version


class Lattice(NamedTuple):
    """The lattice points around N feature vectors in d dimensions. Point 0 stands for "none".

    offsets    (N, d+1) int32    the lattice points (1..M) at the vertices of each pixel's simplex
    weights    (N, d+1) float32  barycentric weights of those vertices (>= 0, summing to 1 per pixel)
    neighbours (d+1, M+1, 2)     the two neighbours of each point along each lattice direction (0: none)
    keys       (M+1, d) int32    the first d coordinates of each point in the lattice (the last is minus their sum)
    """

    offsets: np.ndarray
    weights: np.ndarray
    neighbours: np.ndarray
    keys: np.ndarray

    @property
    def n_points(self) -> int:
        return self.keys.shape[0] - 1

    @property
    def dim(self) -> int:
        return self.keys.shape[1]


def build_lattice(features: np.ndarray) -> Lattice:
    """(N, d) features (already divided by their standard deviations) -> Lattice. Built in float32."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    largest = float(np.abs(features).max()) if features.size else 0.0
    if not largest <= MAX_FEATURE:  # also NaN
        raise ValueError(f"build_lattice: features up to {largest:.3g} are too large for the float32 lattice "
                         f"(at most {MAX_FEATURE:g}); use larger standard deviations")
    keys, weights = fast._simplex_vertices(features)
    if np.isnan(weights[:, 0]).any():  # the kernel's own guard (see _simplex_vertices)
        raise ValueError("build_lattice: float32 rounding put a feature vector outside every simplex; "
                         "use larger standard deviations")
    offsets, point_keys, table, mask = fast._number_points(keys)
    neighbours = fast._neighbours(point_keys, table, mask)
    return Lattice(offsets, weights, neighbours, point_keys)


def lattice_splat(lattice: Lattice, values: np.ndarray) -> np.ndarray:
    """(N, C) values -> (M+1, C): each pixel adds weight * value to the vertices of its simplex."""
    out = np.zeros((lattice.n_points + 1, values.shape[1]), values.dtype)
    for r in range(lattice.offsets.shape[1]):
        np.add.at(out, lattice.offsets[:, r], lattice.weights[:, r, None] * values)
    out[0] = 0.0
    return out


def lattice_blur(lattice: Lattice, values: np.ndarray) -> np.ndarray:
    """(M+1, C) -> (M+1, C): along each of the d+1 directions, v[m] + (v[left] + v[right]) / 2.
    Each pass reads the previous pass's values only (a new array, never in place)."""
    for j in range(lattice.neighbours.shape[0]):
        left, right = lattice.neighbours[j, :, 0], lattice.neighbours[j, :, 1]
        values = values + 0.5 * (values[left] + values[right])
        values[0] = 0.0
    return values


def lattice_blur_transposed(lattice: Lattice, values: np.ndarray) -> np.ndarray:
    """B^T for B = ``lattice_blur`` (= B_d .. B_1 B_0): the same passes with the directions in reverse order,
    B_0 .. B_d. Each pass B_j is a symmetric matrix (m is j-neighbour of n iff n is of m), but B_j and B_k do not
    commute where the lattice has no point (its edges), so the forward order is not the transpose."""
    return lattice_blur(lattice._replace(neighbours=lattice.neighbours[::-1]), values)


def lattice_slice(lattice: Lattice, lattice_values: np.ndarray) -> np.ndarray:
    """(M+1, C) -> (N, C): each pixel reads its simplex's vertices with the splat weights."""
    return np.einsum("nr,nrc->nc", lattice.weights, lattice_values[lattice.offsets])


def lattice_filter(lattice: Lattice, values: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, C), approximately K @ values for the Gaussian kernel K of the features.
    The 1/(1 + 2^-d) rescales the blur's [1/2, 1, 1/2] passes so that a constant maps near itself."""
    alpha = 1.0 / (1.0 + 2.0 ** -lattice.dim)
    return alpha * lattice_slice(lattice, lattice_blur(lattice, lattice_splat(lattice, values)))


# ---------------------------------------------------------------------------------------------
# the local-window CRF (Teichmann and Cipolla's Convolutional CRF), readable version


def window_kernel(features: np.ndarray, k: int) -> np.ndarray:
    """(H, W, d) features -> (k*k, H, W): K[o, y, x] = exp(-|f[y, x] - f[y + dy, x + dx]|^2 / 2) for the offsets
    o = (dy, dx) of a k x k window (row-major, dy and dx from -(k//2) to k//2); 0 where the window leaves the
    image. The window's centre (the pixel itself) is 1, as in the full kernel."""
    H, W, _ = features.shape
    r = k // 2
    K = np.zeros((k * k, H, W), features.dtype)
    for o, (dy, dx) in enumerate((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)):
        here, there = shifted_overlap(H, W, dy, dx)
        K[(o, *here)] = np.exp(-0.5 * np.sum((features[here] - features[there]) ** 2, axis=-1))
    return K


def window_message_naive(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(H, W, C) values, (k*k, H, W) weights -> (H, W, C): out[y, x] = sum_o weights[o, y, x] * values[y + dy,
    x + dx], one whole-image pass an offset (an unfold times a per-pixel kernel, as ConvCRF computes it)."""
    H, W, _ = values.shape
    r = int(round(np.sqrt(weights.shape[0]))) // 2
    out = np.zeros_like(values)
    for o, (dy, dx) in enumerate((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)):
        here, there = shifted_overlap(H, W, dy, dx)
        out[here] += weights[(o, *here)][..., None] * values[there]
    return out


class WindowFilter:
    """The normalised kernel truncated to a k x k window, A = after * K_k * before, the local-window CRF's
    message. K_k is symmetric (the Gaussian is, and so is the window), so A^T = before * K_k * after. Each pixel
    costs k*k * C multiply-adds against the lattice's O(d C): cheap for small k on a GPU, where ConvCRF was
    proposed, not on a CPU. Same conventions as the full kernel (self term, normalisation by the window's own
    sums); ConvCRF itself learns its compatibility and does not normalise. ``f(values)`` -> A @ values, (N, C)
    pixel-major -> (N, C); ``f(values, out, scale)``; ``f.transposed(values)``. Arithmetic in `dtype`."""

    def __init__(self, features, shape, k, normalization="symmetric", dtype=np.float64, weight=1.0):
        H, W = shape
        self.shape, self.k = (H, W), k
        self.kernel = window_kernel(np.asarray(features, np.float64).reshape(H, W, -1), k).astype(dtype)
        norm = self.kernel.sum(axis=0, dtype=np.float64).reshape(-1, 1)
        if normalization == "symmetric":
            self.before, self.after = 1.0 / np.sqrt(norm), weight / np.sqrt(norm)
        else:
            self.before, self.after = np.ones_like(norm), weight / norm
        self.before, self.after = self.before.astype(dtype), self.after.astype(dtype)

    def _apply(self, values, before, after):
        H, W = self.shape
        out = np.zeros((H, W, values.shape[1]), values.dtype)
        window_fast.window_message(np.ascontiguousarray((before * values).reshape(H, W, -1)), self.kernel, out)
        return after * out.reshape(H * W, -1)

    def __call__(self, values, out=None, scale=1.0):
        return _scaled_into(self._apply(values, self.before, self.after), out, scale)

    def transposed(self, values):
        return self._apply(values, self.after, self.before)


# ---------------------------------------------------------------------------------------------
# dense CRF


def dense_crf(probs, image, n_iters=10, pos_w=3.0, pos_xy_std=3.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0,
              method="lattice", compat=None, normalization="symmetric", window=11) -> np.ndarray:
    """Mean-field inference in the fully-connected CRF.

    probs: (C, H, W) float probabilities (>= 0, summing to 1 over C at every pixel);
    image: (H, W, 3) uint8 RGB. Defaults: DeepLab v2's ResNet-101 appearance kernel (bi_w 4, bi_xy_std 67,
    bi_rgb_std 3) with the paper's smoothness kernel (pos_w 3, pos_xy_std 3). -> Q, (C, H, W) float32.
    n_iters=0 returns the normalised (floored) input probabilities. method="window": messages only within a
    `window` x `window` neighbourhood (odd; ConvCRF's default 11), see WindowFilter.
    """
    C, H, W = _check_inputs(probs, image, n_iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std,
                            method, compat, normalization, window=window)
    N = H * W
    logits = np.log(np.maximum(probs.reshape(C, N).T, PROB_FLOOR))  # (N, C), pixel-major; the unary is -logits
    # the lattice works in float32 (as pydensecrf does, see lattice_fast._simplex_vertices), the exact method in float64
    dtype = np.float64 if method == "exact" else np.float32
    kernels = [(w, f) for w, f in _kernel_features(image, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, dtype)
               if w != 0]
    mu = None if compat is None else np.asarray(compat, np.float64)
    with _threads_for(N):
        if method == "exact":
            q = _exact_mean_field(logits.astype(dtype), kernels, n_iters, mu, normalization)
        else:  # the weight folded into each kernel's filter
            filters = [_filter(method, f, (H, W), normalization, dtype, window, weight=w) for w, f in kernels]
            q = _iterate(logits.astype(dtype), filters, [1.0] * len(filters), n_iters, mu)[0]
    return np.ascontiguousarray(q.T.reshape(C, H, W), dtype=np.float32)


def mean_field(logits, image, n_iters=10, pos_w=3.0, pos_xy_std=3.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0,
               method="lattice", compat=None, normalization="symmetric", window=11):
    """``dense_crf`` started from logits, keeping what ``mean_field_backward`` needs: the CRF as a layer.

    logits: (C, H, W), or a batch (N, C, H, W) with images (N, H, W, 3); float32 or float64. The unary is
    -logits, so ``dense_crf(p, image, **kw)`` equals ``mean_field(log(max(p, 1e-5)), image, **kw)[0]``.
    -> (Q, cache): Q has the logits' shape and dtype. Both kernels are filtered even when a weight is 0, so
    that both weights get a gradient. float64 logits run the lattice's splat, blur and slice in float64 (the
    lattice itself, its points and barycentric weights, is built in float32 as for ``dense_crf``).
    """
    batch = isinstance(logits, np.ndarray) and logits.ndim == 4
    pairs = (zip(logits, image) if batch and isinstance(image, np.ndarray) and image.ndim == 4
             and len(image) == len(logits) else None) if batch else [(logits, image)]
    if pairs is None:
        raise ValueError(f"mean_field: a batch of logits {logits.shape} needs images of shape "
                         f"({len(logits)}, H, W, 3), got {_describe(image)}")
    out, caches = [], []
    for lg, im in pairs:
        q, cache = _mean_field_one(lg, im, n_iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, method,
                                   compat, normalization, window)
        out.append(q)
        caches.append(cache)
    return (np.stack(out), caches) if batch else (out[0], caches[0])


def mean_field_backward(dQ, cache) -> dict:
    """Gradients through ``mean_field``. dQ: dLoss/dQ, Q's shape and dtype; cache: mean_field's.

    -> {"logits": logits' shape and dtype, "pos_w": float, "bi_w": float, "compat": (C, C) or None (Potts)},
    summed over a batch for the weights and the compatibility. Per iteration t, backwards (z_t the softmax's
    input, m_t = sum_k w_k A_k Q_{t-1} the message, A_k the normalised kernel):

        dz_t = Q_t * (dQ_t - <dQ_t, Q_t>)      dm_t = dz_t (Potts) or -dz_t mu     dmu -= dz_t^T m_t
        dQ_{t-1} = sum_k w_k A_k^T dm_t        dw_k += <A_k^T dm_t, Q_{t-1}>

    and dlogits = sum_t dz_t. A_k^T for the lattice: splat with the slice weights, blur in the reverse order
    of directions, slice with the splat weights (each direction's blur is a symmetric matrix).
    """
    batch = isinstance(cache, list)
    caches = cache if batch else [cache]
    shape = (len(caches), *caches[0]["shape"]) if batch else caches[0]["shape"]
    dtype = caches[0]["dtype"]
    if not isinstance(dQ, np.ndarray) or dQ.shape != shape or dQ.dtype != dtype:
        raise ValueError(f"mean_field_backward: dQ must be a {np.dtype(dtype).name} array of shape {shape} "
                         f"(Q's), got {_describe(dQ)}")
    if not np.all(np.isfinite(dQ)):
        raise ValueError("mean_field_backward: dQ contains NaN or inf")
    grads = [_mean_field_backward_one(d, c) for d, c in zip(dQ if batch else [dQ], caches)]
    total = {"logits": np.stack([g["logits"] for g in grads]) if batch else grads[0]["logits"]}
    for name in ("pos_w", "bi_w"):
        total[name] = float(sum(g[name] for g in grads))
    total["compat"] = None if grads[0]["compat"] is None else sum(g["compat"] for g in grads)
    return total


def _mean_field_one(logits, image, n_iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, method, compat,
                    normalization, window):
    C, H, W = _check_inputs(logits, image, n_iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, method,
                            compat, normalization, fn="mean_field", logits=True, window=window)
    N, dtype = H * W, logits.dtype.type
    kernels = _kernel_features(image, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std,
                               np.float32 if method == "lattice" else np.float64)
    with _threads_for(N):
        filters = [_filter(method, f, (H, W), normalization, dtype, window) for _, f in kernels]
        mu = None if compat is None else np.asarray(compat, dtype)
        weights = [float(w) for w, _ in kernels]
        q, qs, ms = _iterate(np.ascontiguousarray(logits.reshape(C, N).T, dtype), filters, weights, n_iters, mu,
                             keep=True)
    cache = dict(shape=(C, H, W), dtype=np.dtype(dtype), filters=filters, weights=weights, mu=mu, qs=qs, ms=ms)
    return np.ascontiguousarray(q.T.reshape(C, H, W), dtype), cache


def _mean_field_backward_one(dQ, cache):
    C, H, W = cache["shape"]
    qs, ms, mu, weights, filters = cache["qs"], cache["ms"], cache["mu"], cache["weights"], cache["filters"]
    dq = np.ascontiguousarray(dQ.reshape(C, H * W).T)
    dlogits = np.zeros_like(dq)
    dw = [0.0] * len(filters)
    dmu = None if mu is None else np.zeros_like(mu)
    with _threads_for(H * W):
        for t in range(len(qs) - 1, 0, -1):
            dz = _softmax_backward(qs[t], dq)
            dlogits += dz
            if mu is None:
                dm = dz
            else:
                dm = -(dz @ mu)
                dmu -= dz.T @ ms[t - 1]
            dq = np.zeros_like(dq)
            for k, filt in enumerate(filters):
                h = filt.transposed(dm)
                dq += weights[k] * h
                dw[k] += float(np.sum(h * qs[t - 1], dtype=np.float64))
        dlogits += _softmax_backward(qs[0], dq)
    return {"logits": np.ascontiguousarray(dlogits.T.reshape(C, H, W)), "pos_w": dw[0], "bi_w": dw[1],
            "compat": dmu}


def _filter(method, features, shape, normalization, dtype, window, weight=1.0):
    """The normalised kernel of `features` as `method` computes it (an object with __call__ and transposed)."""
    if method == "exact":
        return ExactFilter(features, normalization, weight)
    if method == "window":
        return WindowFilter(features, shape, window, normalization, dtype, weight)
    return LatticeFilter(features, normalization, dtype, weight)


def _softmax_backward(q, dq):
    return q * (dq - np.sum(dq * q, axis=1, keepdims=True))


def _iterate(logits, filters, weights, n_iters, mu, keep=False):
    """Q_0 = softmax(logits); Q_t = softmax(logits + m_t) with Potts (the reward of the module docstring), or
    softmax(logits - m_t mu^T) for a compatibility mu; m_t = sum_k weights[k] * filters[k](Q_{t-1}).
    logits (N, C) pixel-major. -> (Q_T, [Q_0 .. Q_T], [m_1 .. m_T]); the lists only when keep."""
    float32 = logits.dtype == np.float32
    N, C = logits.shape
    unary = -logits

    def softmax(message):  # softmax(message - unary); the fused float32 kernel overwrites `message`
        if float32:
            q = np.empty((N, C), np.float32)
            fast._softmax_update(unary, message, q)
            return q
        return _softmax_rows(message - unary)

    q = softmax(np.zeros((N, C), logits.dtype))
    qs, ms = [q], []
    for _ in range(n_iters):
        message = np.zeros((N, C), logits.dtype)
        for w, filt in zip(weights, filters):
            filt(q, out=message, scale=w)
        if keep:
            ms.append(message.copy())
        if mu is not None:
            message = np.ascontiguousarray(-(message @ mu.T.astype(logits.dtype)))
        q = softmax(message)
        if keep:
            qs.append(q)
    return q, qs, ms


@contextmanager
def _threads_for(n_pixels):
    """One numba thread for small images. An iteration is some 20 short parallel loops; on a small image
    each lasts microseconds, and when the other core is busy (a browser, a second kernel) every loop
    waits for a thread the OS has not scheduled: measured 1.6 s instead of 0.01 s on 48x64."""
    if n_pixels >= PARALLEL_MIN_PIXELS:
        yield
        return
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(saved)


def _kernel_features(image, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, dtype):
    """[(pos_w, smoothness features), (bi_w, appearance features)], the order of mean_field_backward's grads."""
    return [(pos_w, pixel_features(image, pos_xy_std, dtype=dtype)),
            (bi_w, pixel_features(image, bi_xy_std, bi_rgb_std, dtype=dtype))]


def _softmax_rows(e):
    e = np.exp(e - e.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _exact_filter(features, values):
    """K @ values for the Gaussian kernel of `features`, a block of rows at a time: (N, C) -> (N, C)."""
    out = np.empty_like(values)
    rows = max(1, _EXACT_CHUNK_ENTRIES // features.shape[0])
    for a in range(0, features.shape[0], rows):
        out[a:a + rows] = _gaussian_rows(features[a:a + rows], features) @ values
    return out


def _gaussian_rows(fa, fb):
    d2 = np.sum(fa**2, 1)[:, None] + np.sum(fb**2, 1)[None, :] - 2.0 * fa @ fb.T
    return np.exp(-0.5 * np.maximum(d2, 0.0))


class ExactFilter:
    """The normalised kernel A = after * K * before of (N, d) features, float64, applied a block of rows at a
    time: ``f(values)`` -> A @ values, (N, C) -> (N, C); ``f(values, out, scale)`` adds scale * A @ values to out;
    ``f.transposed(values)`` -> A^T @ values = before * K * after * values (K is symmetric)."""

    def __init__(self, features, normalization="symmetric", weight=1.0):
        self.features = np.asarray(features, np.float64)
        # up to _EXACT_CACHE_PIXELS the N x N kernel is kept: each product one GEMM
        self.matrix = _gaussian_rows(self.features, self.features) if len(features) <= _EXACT_CACHE_PIXELS else None
        norm = self._kernel(np.ones((features.shape[0], 1)))[:, 0]
        if normalization == "symmetric":
            self.before, self.after = 1.0 / np.sqrt(norm)[:, None], weight / np.sqrt(norm)[:, None]
        else:
            self.before, self.after = np.ones((len(norm), 1)), weight / norm[:, None]

    def _kernel(self, values):
        return _exact_filter(self.features, values) if self.matrix is None else self.matrix @ values

    def __call__(self, values, out=None, scale=1.0):
        return _scaled_into(self.after * self._kernel(self.before * values), out, scale)

    def transposed(self, values):
        return self.before * self._kernel(self.after * values)


def _scaled_into(result, out, scale):
    """A filter's answer: scale * result, or added into `out` (returned) when one is given."""
    if out is None:
        return result if scale == 1.0 else scale * result
    out += scale * result
    return out


def _exact_mean_field(logits, kernels, n_iters, mu, normalization):
    """dense_crf's exact method. Up to _EXACT_CACHE_PIXELS it keeps sum_m w_m A_m as one matrix: one GEMM
    an iteration."""
    filters = [ExactFilter(f, normalization) for _, f in kernels]
    weights = [w for w, _ in kernels]
    if filters and filters[0].matrix is not None:
        combined = sum(w * k.after * k.matrix * k.before.T for w, k in zip(weights, filters))

        def message(values, out, scale=1.0):
            out += scale * (combined @ values)

        filters, weights = [message], [1.0]
    return _iterate(logits, filters, weights, n_iters, mu)[0]


class LatticeFilter:
    """The normalised kernel on the permutohedral lattice of (N, d) features, and its transpose:

        A   = after * alpha * P^T B_d .. B_1 B_0 P * before      (P the splat, B_j the blur along direction j,
        A^T = before * alpha * P^T B_0 B_1 .. B_d P * after       alpha the blur's gain correction)

    Each B_j is a symmetric matrix (m is j-neighbour of n iff n is of m), so the transpose is the same three
    steps with the scales swapped and the directions blurred in reverse order. ``f(values)`` -> A @ values,
    (N, C) -> (N, C); ``f(values, out, scale)`` adds scale * A @ values to out; ``f.transposed(values)``.
    Arithmetic in `dtype` (float32 as pydensecrf, or float64); the lattice itself is built in float32.
    `weight` is folded into `after` (dense_crf's way: one multiplication fewer an iteration)."""

    def __init__(self, features, normalization="symmetric", dtype=np.float64, weight=1.0):
        lat = build_lattice(features)
        N = lat.offsets.shape[0]
        start, pixels, cw = fast.transpose(lat.offsets, lat.weights, lat.n_points)
        alpha = 1.0 / (1.0 + 2.0 ** -lat.dim)
        # the lattice's own response to ones, to normalise by (never by the exact one); in float32 as pydensecrf
        norm = fast_filter(np.ones((N, 1), np.float32), start, pixels, cw, lat, lat.weights) * alpha
        norm = norm[:, 0].astype(np.float64) + 1e-20
        if normalization == "symmetric":
            before, after = 1.0 / np.sqrt(norm), weight * alpha / np.sqrt(norm)
        else:
            before, after = np.ones(N), weight * alpha / norm
        self.lat, self.start, self.pixels = lat, start, pixels
        # the per-pixel scales folded into the splat (CSR order) and slice weights
        self.cw, self.sw = (cw * before[pixels]).astype(dtype), (lat.weights * after[:, None]).astype(dtype)
        self.cw_t, self.sw_t = (cw * after[pixels]).astype(dtype), (lat.weights * before[:, None]).astype(dtype)
        self.reversed = np.ascontiguousarray(lat.neighbours[::-1])
        self.buffers = None

    def _buffers(self, values):
        shape = (2, self.lat.n_points + 1, values.shape[1])
        if self.buffers is None or self.buffers.shape != shape or self.buffers.dtype != values.dtype:
            self.buffers = np.empty(shape, values.dtype)  # splat/blur ping-pong, reused every iteration
        return self.buffers

    def __call__(self, values, out=None, scale=1.0):
        if out is not None and scale == 1.0:  # dense_crf's every iteration: slice straight into the message
            return fast_filter(values, self.start, self.pixels, self.cw, self.lat, self.sw, out, self._buffers(values))
        return _scaled_into(fast_filter(values, self.start, self.pixels, self.cw, self.lat, self.sw,
                                        buffers=self._buffers(values)), out, scale)

    def transposed(self, values):
        return fast_filter(values, self.start, self.pixels, self.cw_t, self.lat, self.sw_t,
                           buffers=self._buffers(values), neighbours=self.reversed)


def fast_filter(values, start, pixels, cw, lat, sw, out=None, buffers=None, neighbours=None):
    """slice(blur(splat(values))) with the given splat (cw) and slice (sw) weights, added to `out`.
    Computed in values' dtype; `neighbours` replaces lat.neighbours (the reversed order for the transpose)."""
    M1, C = lat.n_points + 1, values.shape[1]
    if buffers is None:
        buffers = np.empty((2, M1, C), values.dtype)
    fast._splat(values, start, pixels, cw, buffers[0])
    blurred = fast.blur(buffers[0], buffers[1], lat.neighbours if neighbours is None else neighbours)
    if out is None:
        out = np.zeros((values.shape[0], C), values.dtype)
    fast._slice_add(blurred, lat.offsets, sw, out)
    return out


# ---------------------------------------------------------------------------------------------
# argument checks


def _check_choice(fn, name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _describe(a):
    return f"ndarray of shape {a.shape} and dtype {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__


def _check_inputs(probs, image, n_iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, method, compat,
                  normalization, fn="dense_crf", logits=False, window=11):
    """dense_crf's checks; with logits=True, mean_field's (float32/float64 logits, any finite values)."""
    name = "logits" if logits else "probs"
    kinds = (np.float32, np.float64) if logits else None
    if (not isinstance(probs, np.ndarray) or probs.ndim != 3 or probs.dtype.kind != "f"
            or (kinds and probs.dtype not in kinds)):
        raise ValueError(f"{fn}: {name} must be a {'float32 or float64' if logits else 'float'} array of shape "
                         f"(C, H, W){' or (N, C, H, W)' if logits else ''}, got {_describe(probs)}")
    C, H, W = probs.shape
    if probs.size == 0:
        raise ValueError(f"{fn}: {name} must have at least one label and one pixel, got shape {probs.shape}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != (H, W, 3):
        raise ValueError(f"{fn}: image must be a uint8 RGB array of shape (H, W, 3) = ({H}, {W}, 3) to match "
                         f"{name} {probs.shape}, got {_describe(image).removeprefix('ndarray of ')}")
    if not np.all(np.isfinite(probs)):
        bad = np.argwhere(~np.isfinite(probs))[0]
        raise ValueError(f"{fn}: {name} contains NaN or inf (first at label, row, col = {tuple(bad.tolist())})")
    if not logits and probs.min() < 0:
        bad = np.unravel_index(np.argmin(probs), probs.shape)
        raise ValueError(f"{fn}: probs must be >= 0, got {probs[bad]:.4g} at label, row, col = "
                         f"{tuple(int(i) for i in bad)}")
    sums = probs.sum(axis=0, dtype=np.float64)
    worst = np.unravel_index(np.argmax(np.abs(sums - 1.0)), sums.shape)
    if not logits and abs(sums[worst] - 1.0) > 1e-3:
        raise ValueError(f"{fn}: probs must sum to 1 over the labels at every pixel, got {sums[worst]:.6g} at "
                         f"row, col = {tuple(int(i) for i in worst)} (pass softmax probabilities, not logits)")
    if isinstance(n_iters, (bool, np.bool_)) or not isinstance(n_iters, (int, np.integer)) or n_iters < 0:
        raise ValueError(f"{fn}: n_iters must be an int >= 0, got {n_iters!r}")
    def number(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))

    for name, v, span in (("pos_xy_std", pos_xy_std, max(H, W) - 1), ("bi_xy_std", bi_xy_std, max(H, W) - 1),
                          ("bi_rgb_std", bi_rgb_std, 255)):
        if not number(v) or not np.isfinite(v) or v <= 0:
            raise ValueError(f"{fn}: {name} must be a finite number > 0, got {v!r}")
        if span / v > MAX_FEATURE:
            raise ValueError(f"{fn}: {name}={v!r} is too small: features up to {span}/{v!r} = {span / v:.3g} exceed the "
                             f"{MAX_FEATURE:g} the float32 lattice handles; use {name} >= {span / MAX_FEATURE:.3g}")
    for name, v in (("pos_w", pos_w), ("bi_w", bi_w)):
        if not number(v) or not np.isfinite(v) or v < 0:
            raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {v!r}")
    _check_choice(fn, "method", method, METHODS)
    _check_choice(fn, "normalization", normalization, NORMALIZATIONS)
    if compat is not None:
        mu = np.asarray(compat)
        if mu.shape != (C, C) or mu.dtype.kind not in "fiu" or not np.all(np.isfinite(mu)):
            raise ValueError(f"{fn}: compat must be a finite ({C}, {C}) matrix (one row and column per label) "
                             f"or None for Potts, got shape {mu.shape} and dtype {mu.dtype}")
    if method == "window" and (isinstance(window, (bool, np.bool_)) or not isinstance(window, (int, np.integer))
                               or window < 1 or window % 2 == 0):
        raise ValueError(f"{fn}: window must be an odd int >= 1 (the side of the square neighbourhood), got {window!r}")
    if method == "exact" and H * W > EXACT_MAX_PIXELS:
        raise ValueError(f"{fn}: method='exact' is O(N^2) and meant for small images; {H}x{W} = {H * W} pixels is "
                         f"more than {EXACT_MAX_PIXELS}. Use method='lattice'.")
    return C, H, W
