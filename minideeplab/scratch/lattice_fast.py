"""numba kernels of the permutohedral lattice (Adams, Baek and Davis 2010) and of mean-field inference.

The readable NumPy versions of splat, blur and slice are in ``crf.py``; these are the same operations
arranged for speed:

* build (once per kernel and image), in float32 like pydensecrf: each pixel's feature vector is lifted onto the plane
  sum(x) = 0 of R^(d+1), the d+1 vertices of its enclosing simplex are found (round to the nearest
  remainder-0 point, rank the residuals, fix up) with barycentric weights, and the vertices go into a
  hash table that numbers the lattice points that occur. Computing the vertices is parallel over
  pixels; numbering them is a serial pass over a hash table.
* splat as a gather, not a scatter-add: the pixel -> vertex table is transposed once (CSR), so every
  lattice point sums its own contributors. Each thread writes only its own rows: race-free and the
  same result whatever the thread count.
* blur: d+1 passes of new = old + (left + right)/2, parallel over lattice points, two buffers.
* slice: parallel over pixels, a gather with the splat weights.
* the normalisation (symmetric D^-1/2 K D^-1/2 or per pixel D^-1), the kernel weight and the
  lattice's 1/(1 + 2^-d) scale are folded into the splat and slice weights once, so an iteration is
  splat, blur, slice per kernel and one softmax.

Values are stored pixel-major, (N, C): a pixel's C label values are contiguous, which is what the
gathers read. Index 0 of every lattice value array is a zero row standing in for "no such point".
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange


@numba.njit(cache=True, parallel=True)
def _simplex_vertices(features):
    """features (N, d) float32 -> keys (N, d+1, d) int32, weights (N, d+1) float32: the lattice points of
    each pixel's enclosing simplex (first d coordinates; the last is minus their sum) and its
    barycentric weights (non-negative, summing to 1).

    Computed in float32 with ties rounded to even, as pydensecrf's SSE code does: a feature exactly
    between two lattice points (common with integer colours) is assigned by rounding, and which lattice
    points exist changes what the blur carries, so matching pydensecrf to 1e-3 needs the same arithmetic."""
    N, d = features.shape
    f32 = np.float32
    keys = np.empty((N, d + 1, d), np.int32)
    weights = np.empty((N, d + 1), np.float32)
    scale = np.empty(d, np.float32)
    inv_std = f32(np.sqrt(2.0 / 3.0) * (d + 1))  # the lattice spacing for which the blur is a unit Gaussian
    for i in range(d):
        scale[i] = f32(1.0 / np.sqrt((i + 1.0) * (i + 2.0)) * inv_std)
    down = f32(1.0 / (d + 1))
    for n in prange(N):
        elevated = np.empty(d + 1, np.float32)
        rem0 = np.empty(d + 1, np.int64)
        rank = np.zeros(d + 1, np.int64)
        bary = np.zeros(d + 2, np.float32)
        # lift onto the hyperplane whose coordinates sum to zero
        s = f32(0.0)
        for j in range(d, 0, -1):
            cf = features[n, j - 1] * scale[j - 1]
            elevated[j] = s - f32(j) * cf
            s += cf
        elevated[0] = s
        # nearest remainder-0 lattice point (coordinates multiples of d+1), ties to even as SSE rounds
        total = 0
        for i in range(d + 1):
            v = np.rint(down * elevated[i])
            rem0[i] = int(v) * (d + 1)
            total += int(v)
        # rank the residuals, then move the point so that its coordinates sum to zero
        for i in range(d + 1):
            for j in range(i + 1, d + 1):
                if elevated[i] - f32(rem0[i]) < elevated[j] - f32(rem0[j]):
                    rank[i] += 1
                else:
                    rank[j] += 1
        if total > 0:
            for i in range(d + 1):
                if rank[i] >= d + 1 - total:
                    rem0[i] -= d + 1
                    rank[i] += total - (d + 1)
                else:
                    rank[i] += total
        elif total < 0:
            for i in range(d + 1):
                if rank[i] < -total:
                    rem0[i] += d + 1
                    rank[i] += d + 1 + total
                else:
                    rank[i] += total
        # Exact for features up to ~1e5 (crf._check_inputs); beyond, float32 rounding can leave a rank
        # outside [0, d], and the writes below would land outside `bary`. Flag it instead (weight NaN).
        for i in range(d + 1):
            if rank[i] < 0 or rank[i] > d:
                total = d + 2
        if total == d + 2:
            for r in range(d + 1):
                for i in range(d):
                    keys[n, r, i] = 0
                weights[n, r] = np.nan
            continue
        # barycentric coordinates
        for i in range(d + 1):
            v = (elevated[i] - f32(rem0[i])) * down
            bary[d - rank[i]] += v
            bary[d + 1 - rank[i]] -= v
        bary[0] += f32(1.0) + bary[d + 1]
        # vertex r of the simplex is the remainder-0 point moved r steps
        for r in range(d + 1):
            for i in range(d):
                keys[n, r, i] = rem0[i] + r if rank[i] <= d - r else rem0[i] + r - (d + 1)
            weights[n, r] = bary[r]
    return keys, weights


@numba.njit(cache=True)
def _hash(key, mask):
    """Slot of a lattice point. Neighbouring points have keys that differ by a fixed step, so a linear
    hash would put them at evenly spaced slots and make linear probing crawl; the final xor-shift-multiply
    scatters them. Everything stays below 2^62, so the JIT and plain Python give the same slots."""
    h = np.int64(0)
    for k in range(key.shape[0]):
        h = ((h + np.int64(key[k])) * 2531011) & 0x7FFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0x7FFFFFFF
    h ^= h >> 13
    return h & mask


@numba.njit(cache=True)
def _find(table, table_keys, key, mask):
    """Slot of `key` in the open-addressing table (table[slot] == 0 when absent)."""
    h = _hash(key, mask)
    while True:
        idx = table[h]
        if idx == 0:
            return h
        same = True
        for k in range(key.shape[0]):
            if table_keys[idx, k] != key[k]:
                same = False
                break
        if same:
            return h
        h = (h + 1) & mask


@numba.njit(cache=True)
def _table_for(point_keys, M, cap):
    """An open-addressing table of `cap` slots (a power of two) holding points 1..M."""
    mask = cap - 1
    table = np.zeros(cap, np.int32)
    for m in range(1, M + 1):
        table[_find(table, point_keys, point_keys[m], mask)] = m
    return table


@numba.njit(cache=True)
def _number_points(keys):
    """Give every distinct lattice point a number 1..M (0 means "none").
    -> offsets (N, d+1) int32, point_keys (M+1, d) int32, table, mask.
    The table is kept at most half full and no larger: a small table stays in cache, and lookups
    into it are most of the build's time."""
    N, V, d = keys.shape
    cap = 1024
    while cap < 2 * N:
        cap *= 2
    mask = cap - 1
    table = np.zeros(cap, np.int32)
    point_keys = np.zeros((N * V + 1, d), np.int32)
    offsets = np.empty((N, V), np.int32)
    M = 0
    for n in range(N):
        for r in range(V):
            key = keys[n, r]
            h = _find(table, point_keys, key, mask)
            idx = table[h]
            if idx == 0:
                M += 1
                idx = M
                table[h] = M
                point_keys[M] = key
                if 2 * M > cap:  # grow and re-insert
                    cap *= 2
                    mask = cap - 1
                    table = _table_for(point_keys, M, cap)
            offsets[n, r] = idx
    return offsets, point_keys[:M + 1].copy(), table, mask


@numba.njit(cache=True, parallel=True)
def _neighbours(point_keys, table, mask):
    """(d+1, M+1, 2) int32: the two neighbours of each point along each lattice direction (0 = none).
    Along direction j a step adds 1 to every coordinate but j, which loses d (coordinates still sum to 0)."""
    M1, d = point_keys.shape
    nb = np.zeros((d + 1, M1, 2), np.int32)
    for m in prange(1, M1):
        key = np.empty(d, np.int32)
        for j in range(d + 1):
            for side in range(2):
                step = -1 if side == 0 else 1
                for k in range(d):
                    key[k] = point_keys[m, k] - step
                if j < d:
                    key[j] = point_keys[m, j] + step * d
                nb[j, m, side] = table[_find(table, point_keys, key, mask)]
    return nb


@numba.njit(cache=True)
def transpose(offsets, weights, M):
    """CSR of the splat: for lattice point m, its contributors are pixels[start[m]:start[m+1]] with
    weights cw[...]. Built once so that the splat is a gather."""
    N, V = offsets.shape
    start = np.zeros(M + 2, np.int64)
    for n in range(N):
        for r in range(V):
            start[offsets[n, r] + 1] += 1
    for m in range(M + 1):
        start[m + 1] += start[m]
    fill = start[:-1].copy()
    pixels = np.empty(N * V, np.int32)
    cw = np.empty(N * V, np.float32)
    for n in range(N):
        for r in range(V):
            m = offsets[n, r]
            pixels[fill[m]] = n
            cw[fill[m]] = weights[n, r]
            fill[m] += 1
    return start, pixels, cw


@numba.njit(cache=True, parallel=True)
def _splat(values, start, pixels, cw, out):
    """out[m] = sum of cw * values[pixel] over m's contributors; out (M+1, C), row 0 stays 0."""
    C = values.shape[1]
    out[0, :] = 0.0
    for m in prange(1, out.shape[0]):
        for c in range(C):
            out[m, c] = 0.0
        for t in range(start[m], start[m + 1]):
            w = cw[t]
            p = pixels[t]
            for c in range(C):
                out[m, c] += w * values[p, c]


@numba.njit(cache=True, parallel=True)
def blur(values, tmp, nb):
    """d+1 passes of v[m] + (v[left] + v[right]) / 2; ping-pongs between `values` and `tmp` and
    returns the array that holds the result."""
    src, dst = values, tmp
    C = values.shape[1]
    dst[0, :] = 0.0
    for j in range(nb.shape[0]):
        for m in prange(1, values.shape[0]):
            a = nb[j, m, 0]
            b = nb[j, m, 1]
            for c in range(C):
                dst[m, c] = src[m, c] + 0.5 * (src[a, c] + src[b, c])
        src, dst = dst, src
    return src


@numba.njit(cache=True, parallel=True)
def _slice_add(lattice_values, offsets, sw, out):
    """out[n] += sum over the simplex vertices r of sw[n, r] * lattice_values[offsets[n, r]]."""
    C = out.shape[1]
    for n in prange(out.shape[0]):
        for r in range(offsets.shape[1]):
            w = sw[n, r]
            o = offsets[n, r]
            for c in range(C):
                out[n, c] += w * lattice_values[o, c]


@numba.njit(cache=True, parallel=True, fastmath=True)
def _softmax_update(unary, message, q):
    """q[n] = softmax(-unary[n] + message[n]) over labels, for every pixel (float32 throughout)."""
    C = q.shape[1]
    for n in prange(q.shape[0]):
        top = message[n, 0] - unary[n, 0]  # not -inf: fastmath may assume there are no infinities
        for c in range(C):
            e = message[n, c] - unary[n, c]
            message[n, c] = e
            top = max(top, e)
        s = np.float32(0.0)
        for c in range(C):
            v = np.exp(message[n, c] - top)
            q[n, c] = v
            s += v
        inv = np.float32(1.0) / s
        for c in range(C):
            q[n, c] *= inv
