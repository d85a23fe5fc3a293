"""Fast atrous convolution: BLAS (through ``np.matmul``) for the FLOPs, numba for the data movement.

Per kernel tap t = (i, j), output pixel (y, x) reads input pixel (y*stride + i*rate - ph, x*stride + j*rate - pw).
The outputs for which that is real input, not zero padding, form a rectangle R_t, so

    out[:, :, R_t] += weight[:, :, i, j] @ x[:, :, R_t shifted by the tap]      (one GEMM over channels)

and taps whose rectangle is empty are skipped. With "same" padding at large rates on small maps most of
the kernel falls in the padding (33x33 at rate 18: an off-centre tap sees 15 of 33 rows), so skipping it
saves most of the work; PyTorch's oneDNN kernels do the same.

* stride 1 (``_forward_stride1``): the taps of one kernel column read the same input columns, only
  shifted by whole rows. Gather those columns once as a (C, rows*cols) matrix and every tap of the column
  is a row range of it, a view: 3 gathers instead of 9. The centre column of a "same" conv is x itself,
  and the centre tap writes its GEMM straight into the output.
* the input gradient of a stride-1 conv is a stride-1 conv of dout with the kernel flipped and its
  channel axes swapped, so it reuses the forward; dweight_t = dout[R_t] @ x[R_t shifted]^T.
* any stride (``_forward_strided``): per tap, gather what it reads (im2col restricted to R_t), GEMM, add.
* depthwise (one input channel per group): no GEMM worth the name, a numba kernel of its own
  (``_depthwise_forward`` / ``_depthwise_backward``, described where they are defined); the plain loops to
  read are ``atrous.atrous_conv2d_naive``, and the tests run the same cases through both.
* im2col (``_forward_im2col``): when few of the kernel's reads fall in the padding (a backbone conv,
  the 7x7 stem, any stride), one GEMM over K = C*kh*kw per band of output rows, written straight
  into the output: no per-tap partial sums to add up. Bands bound the column buffer (``IM2COL_BYTES``).
* ``conv2d_fused``: the eval unit act(conv(x) * scale + shift (+ residual)): the conv's GEMMs, then
  one in-place pass (``_affine_act``) for eval batch norm, the residual sum and the ReLU. No cache.

The numba kernels of the GEMM paths are serial on purpose: BLAS already uses every core, and a numba
parallel region (OpenMP) next to OpenBLAS's threads made both spin against each other (measured: 8 ms
instead of 1 ms for a gather + GEMM + scatter on 2 cores). The serial copies cost a few percent of the
GEMMs. The depthwise kernels, which have no GEMM to hide behind, split their planes over a few threads.
"""

from __future__ import annotations

import numba
import numpy as np

from minideeplab.specs.conv import check_conv2d


# ---------------------------------------------------------------------------------------------
# geometry


def _tap_ranges(size, out, k, rate, stride, pad):
    """[(lo, hi)] for each tap t of one axis: the outputs where it reads real input (lo == hi: none).
    Empty ranges are clamped to lo == hi, so every width hi - lo is >= 0 (buffer sizes rely on it)."""
    ranges = [_tap_range(size, out, t * rate - pad, stride) for t in range(k)]
    return [(lo, max(lo, hi)) for lo, hi in ranges]


# ---------------------------------------------------------------------------------------------
# numba kernels. Plain loops and slices only, so that NUMBA_DISABLE_JIT=1 runs them as Python.


@numba.njit(cache=True)
def _gather(x, buf, c0, y0, ny, x0, nx, dy, dx, stride):
    """buf[c, (y, n, q)] = x[n, c0 + c, (y0+y)*stride + dy, (x0+q)*stride + dx]: the input a tap reads
    for the output rectangle rows [y0, y0+ny) x cols [x0, x0+nx), as a (channels, pixels) matrix.
    Pixels are ordered (y, n, q) so that a range of rows is a range of columns, for any batch size."""
    N = x.shape[0]
    for c in range(buf.shape[0]):
        for y in range(ny):
            row = (y0 + y) * stride + dy
            for n in range(N):
                base = (y * N + n) * nx
                if stride == 1:  # a contiguous run: a slice copy, which vectorises
                    buf[c, base:base + nx] = x[n, c0 + c, row, x0 + dx:x0 + dx + nx]
                else:
                    for q in range(nx):
                        buf[c, base + q] = x[n, c0 + c, row, (x0 + q) * stride + dx]


@numba.njit(cache=True)
def _scatter_add(out, buf, c0, y0, ny, x0, nx, dy, dx, stride):
    """The adjoint of ``_gather``: out[n, c0 + c, (y0+y)*stride + dy, (x0+q)*stride + dx] += buf[c, (y, n, q)]."""
    N = out.shape[0]
    for c in range(buf.shape[0]):
        for y in range(ny):
            row = (y0 + y) * stride + dy
            for n in range(N):
                base = (y * N + n) * nx
                if stride == 1:
                    out[n, c0 + c, row, x0 + dx:x0 + dx + nx] += buf[c, base:base + nx]
                else:
                    for q in range(nx):
                        out[n, c0 + c, row, (x0 + q) * stride + dx] += buf[c, base + q]


@numba.njit(cache=True)
def _tap_range(size, out, off, stride):
    """Outputs [lo, hi) whose tap at offset ``off`` reads real input: 0 <= o*stride + off < size."""
    return max(0, -(off // stride)), min(out, -((off - size) // stride))  # -(a // b) is ceil(-a / b)


# ---------------------------------------------------------------------------------------------
# depthwise (one input channel per group): no GEMM worth the name, so numba loops, one plane at a time.
#
# Each (image, channel) plane is copied once into a zero-padded buffer ``xb`` (zero columns left and right, zero
# rows above and below): every tap then reads a plain run of memory, padding included, and the loops have no
# boundary to handle (a tap that reads the padding multiplies zeros; in the forward, every output row of a 3x3
# or 5x5 kernel takes the one-pass path). The taps of one kernel row are done in one pass
# over the row (``_taps_row``), so the row's sums stay in registers and are stored once per kernel
# row, not once per tap. Output rows are computed ``VEC`` pixels at a time (rounded up, the extra
# pixels read zeros and are dropped): the vector loops then have no scalar tail, which on 33-pixel
# rows would be a quarter of the work. A strided conv computes its rows at full column resolution
# and keeps every stride-th pixel: twice the multiply-adds at stride 2, but contiguous, vectorised
# reads instead of strided ones.
#
# The hot loops index flat arrays with unsigned integers: numba checks a signed index for
# wrap-around (a[-1]), which stops LLVM from vectorising, and a slice taken inside the loops costs
# its reference counting, more than the row's arithmetic on 33-pixel rows (measured: 2x the time).
# The row helpers are inlined into the kernels (inline="always"): called, each costs its arguments'
# reference counting too (measured: 90 ns a call instead of 11 ns).
#
# The work is split over threads in contiguous chunks (``_split``): the forward's (image, channel)
# planes; in the backward whole channels, each chunk owning dx[:, c] and dweight[c's outputs] and summing
# over the batch in a fixed order, so the result is the same on any number of threads and no two threads
# write the same element. The threads are Python threads running the kernels without the GIL (nogil), not
# a numba parallel region: OpenMP's workers, woken between two OpenBLAS calls whose own workers still
# spin, waited for a core (measured in Xception-65 on 2 cores: the depthwise convs 3.3 s in a prange, 0.5 s
# serial, the GEMMs unchanged).

VEC = 8  # pixels per vector (8 float32 in AVX2): output rows are computed in multiples of this
_FAST = {"reassoc", "nsz", "contract"}  # lets LLVM vectorise the sums (changes their order, nothing else)


@numba.njit(cache=True)
def _round_up(n, k):
    return -(-n // k) * k


@numba.njit(cache=True)
def _offsets(kw, rate, sign, pad, left):
    """offs[j] = sign * j * rate - pad + left: where tap j of a kernel row starts reading in a buffer row
    whose first ``left`` columns are padding."""
    offs = np.empty(kw, np.int64)
    for j in range(kw):
        offs[j] = sign * j * rate - pad + left
    return offs


@numba.njit(cache=True, inline="always", fastmath=_FAST)
def _taps_row(acc, xf, base, wf, wbase, offs, n):
    """acc[q] += sum_j wf[wbase + j] * xf[base + offs[j] + q] for q < n: all taps of one kernel row
    in one pass. 3 and 5 taps (DeepLab's backbones' kernels) are written out; others go tap by tap."""
    kw = offs.shape[0]
    if kw == 3:
        w0, w1, w2 = wf[wbase], wf[wbase + 1], wf[wbase + 2]
        b0, b1, b2 = np.uint64(base + offs[0]), np.uint64(base + offs[1]), np.uint64(base + offs[2])
        for q in range(n):
            uq = np.uint64(q)
            acc[uq] += w0 * xf[b0 + uq] + w1 * xf[b1 + uq] + w2 * xf[b2 + uq]
    elif kw == 5:
        w0, w1, w2, w3, w4 = wf[wbase], wf[wbase + 1], wf[wbase + 2], wf[wbase + 3], wf[wbase + 4]
        b0, b1, b2 = np.uint64(base + offs[0]), np.uint64(base + offs[1]), np.uint64(base + offs[2])
        b3, b4 = np.uint64(base + offs[3]), np.uint64(base + offs[4])
        for q in range(n):
            uq = np.uint64(q)
            acc[uq] += (w0 * xf[b0 + uq] + w1 * xf[b1 + uq] + w2 * xf[b2 + uq]
                        + w3 * xf[b3 + uq] + w4 * xf[b4 + uq])
    else:
        for j in range(kw):
            wv, b = wf[wbase + j], np.uint64(base + offs[j])
            for q in range(n):
                uq = np.uint64(q)
                acc[uq] += wv * xf[b + uq]


@numba.njit(cache=True, inline="always", fastmath=_FAST)
def _taps_3x3(acc, xf, base0, base1, base2, wf, wbase, offs, n):
    """acc[q] = sum_{i, j} wf[wbase + 3i + j] * xf[base_i + offs[j] + q] for q < n: a whole 3x3 kernel in
    one pass, for the output rows whose three input rows are all real (most of them): acc is written once."""
    w00, w01, w02 = wf[wbase], wf[wbase + 1], wf[wbase + 2]
    w10, w11, w12 = wf[wbase + 3], wf[wbase + 4], wf[wbase + 5]
    w20, w21, w22 = wf[wbase + 6], wf[wbase + 7], wf[wbase + 8]
    b00, b01, b02 = np.uint64(base0 + offs[0]), np.uint64(base0 + offs[1]), np.uint64(base0 + offs[2])
    b10, b11, b12 = np.uint64(base1 + offs[0]), np.uint64(base1 + offs[1]), np.uint64(base1 + offs[2])
    b20, b21, b22 = np.uint64(base2 + offs[0]), np.uint64(base2 + offs[1]), np.uint64(base2 + offs[2])
    for q in range(n):
        uq = np.uint64(q)
        acc[uq] = (w00 * xf[b00 + uq] + w01 * xf[b01 + uq] + w02 * xf[b02 + uq]
                   + w10 * xf[b10 + uq] + w11 * xf[b11 + uq] + w12 * xf[b12 + uq]
                   + w20 * xf[b20 + uq] + w21 * xf[b21 + uq] + w22 * xf[b22 + uq])


@numba.njit(cache=True, inline="always", fastmath=_FAST)
def _taps_5x5(acc, xf, base0, base1, base2, base3, base4, wf, wbase, offs, n):
    """``_taps_3x3`` for a 5x5 kernel (MobileNetV3's): acc[q] written once with all 25 taps. Five row passes
    accumulating into acc (``_taps_row``) ran at about one multiply-add a cycle, as if not vectorised (measured,
    1 thread, 960 channels, 33 x 33, rate 2: 14.8 ms; this kernel with the zero rows: 4.3 ms)."""
    o0, o1, o2, o3, o4 = offs[0], offs[1], offs[2], offs[3], offs[4]
    for q in range(n):
        s = xf[0] * 0
        for i in range(5):
            base = (base0, base1, base2, base3, base4)[i]
            w = wbase + 5 * i
            b = np.uint64(base + q)
            s += (wf[w] * xf[b + np.uint64(o0)] + wf[w + 1] * xf[b + np.uint64(o1)] + wf[w + 2] * xf[b + np.uint64(o2)]
                  + wf[w + 3] * xf[b + np.uint64(o3)] + wf[w + 4] * xf[b + np.uint64(o4)])
        acc[np.uint64(q)] = s


@numba.njit(cache=True, inline="always", fastmath=_FAST)
def _dots_row(df, dbase, xf, base, offs, n, dwf, dwbase):
    """dwf[dwbase + j] += sum_q df[dbase + q] * xf[base + offs[j] + q] for q < n: the dweight terms of
    one kernel row (3 taps in one pass)."""
    kw = offs.shape[0]
    d = np.uint64(dbase)
    if kw == 3:
        b0, b1, b2 = np.uint64(base + offs[0]), np.uint64(base + offs[1]), np.uint64(base + offs[2])
        s0 = s1 = s2 = dwf[0] * 0
        for q in range(n):
            uq = np.uint64(q)
            dq = df[d + uq]
            s0 += dq * xf[b0 + uq]
            s1 += dq * xf[b1 + uq]
            s2 += dq * xf[b2 + uq]
        dwf[dwbase] += s0
        dwf[dwbase + 1] += s1
        dwf[dwbase + 2] += s2
    else:
        for j in range(kw):
            b = np.uint64(base + offs[j])
            acc = dwf[0] * 0
            for q in range(n):
                uq = np.uint64(q)
                acc += df[d + uq] * xf[b + uq]
            dwf[dwbase + j] += acc


@numba.njit(cache=True, inline="always")
def _fill_plane(xb, width, left, x, n, c):
    """Rows of the plane x[n, c] into the flat buffer xb, row r at [r * width + left, ... + W) (left: the offset of
    row 0, padding rows and columns included)."""
    H, W = x.shape[2], x.shape[3]
    for r in range(H):
        xrow = x[n, c, r]
        b = np.uint64(r * width + left)
        for q in range(W):
            xb[b + np.uint64(q)] = xrow[q]


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _depthwise_forward(x, weight, bias, out, rate, stride, ph, pw, p0, p1):
    """out[n, o] = bias[o] + sum_taps weight[o, 0, i, j] * x[n, o // m] (shifted), m = Cout / C outputs
    per channel, for the planes p = n * C + c in [p0, p1). x (N, C, H, W), weight (Cout, 1, kh, kw),
    bias (Cout,), out (N, Cout, Ho, Wo) written, all C-contiguous."""
    N, C, H, W = x.shape
    Cout, _, kh, kw = weight.shape
    Ho, Wo = out.shape[2], out.shape[3]
    m = Cout // C
    left = max(0, pw)                              # zero columns before the plane in a buffer row
    top = max(0, ph)                               # zero rows above it, and below it as many as the taps reach
    rows = max(top + H, (Ho - 1) * stride - ph + (kh - 1) * rate + 1 + top)
    offs = _offsets(kw, rate, 1, pw, left)
    ncols = _round_up((Wo - 1) * stride + 1, VEC)  # an output row at full column resolution
    width = max(offs.max() + ncols, left + W)
    wf, of = weight.reshape(weight.size), out.reshape(out.size)
    xb = np.zeros(rows * width, x.dtype)          # the padding stays zero: only the plane is written
    acc = np.empty(ncols, x.dtype)
    for p in range(p0, p1):
        n, c = p // C, p % C
        _fill_plane(xb, width, top * width + left, x, n, c)
        for o in range(c * m, (c + 1) * m):
            b = bias[o]
            for y in range(Ho):
                u = (y * stride - ph + top) * width  # the buffer row kernel row 0 reads; row i reads i * rate below
                r = rate * width
                if kh == 3 and kw == 3:
                    _taps_3x3(acc, xb, u, u + r, u + 2 * r, wf, o * 9, offs, ncols)
                elif kh == 5 and kw == 5:
                    _taps_5x5(acc, xb, u, u + r, u + 2 * r, u + 3 * r, u + 4 * r, wf, o * 25, offs, ncols)
                else:
                    acc[:] = 0
                    for i in range(kh):
                        _taps_row(acc, xb, u + i * r, wf, (o * kh + i) * kw, offs, ncols)
                ob = np.uint64(((n * Cout + o) * Ho + y) * Wo)
                if stride == 1:
                    for q in range(Wo):
                        of[ob + np.uint64(q)] = acc[q] + b
                else:
                    for q in range(Wo):
                        of[ob + np.uint64(q)] = acc[q * stride] + b


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _depthwise_backward(dout, x, weight, dx, dweight, rate, stride, ph, pw, c0, c1):
    """dx and dweight (both zeroed on entry, C-contiguous) of the depthwise conv, for the input channels
    c in [c0, c1): dx[:, c] and dweight[c * m:(c + 1) * m], summed over the batch in order.

    dweight[o, 0, i, j] = sum over n, y, q of dout[n, o, y, q] * x[n, c, y*stride + i*rate - ph, q*stride + j*rate - pw]
    (c = o // m);
    dx is the transposed conv: dx[n, c, r, s] sums weight[o, 0, i, j] * dout[n, o, y, q] over the taps with
    y*stride = r + ph - i*rate and q*stride = s + pw - j*rate: a stride-1 correlation of dout with zeros
    inserted between its pixels (``db``, dout's rows at full column resolution) and the kernel read backwards."""
    N, C, H, W = x.shape
    Cout, _, kh, kw = weight.shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    m = Cout // C
    left = max(0, pw)
    offs = _offsets(kw, rate, 1, pw, left)        # as the forward: where tap j reads x
    ncols = _round_up((Wo - 1) * stride + 1, VEC)
    width = max(offs.max() + ncols, left + W)
    dleft = max(0, rate * (kw - 1) - pw)          # zero columns before dout's row in db
    doffs = _offsets(kw, rate, -1, -pw, dleft)    # where tap j reads db for dx: s + pw - j*rate (+ dleft)
    dcols = _round_up(W, VEC)
    dwidth = max(doffs.max() + dcols, dleft + ncols)
    wf, dwf, dxf = weight.reshape(weight.size), dweight.reshape(dweight.size), dx.reshape(dx.size)
    xb = np.zeros(H * width, x.dtype)
    db = np.zeros(Ho * dwidth, x.dtype)           # between dout's pixels (stride > 1) it stays zero
    acc = np.empty(dcols, x.dtype)
    for c in range(c0, c1):
        for n in range(N):
            _fill_plane(xb, width, left, x, n, c)
            for o in range(c * m, (c + 1) * m):
                for y in range(Ho):
                    drow, b = dout[n, o, y], np.uint64(y * dwidth + dleft)
                    for q in range(Wo):
                        db[b + np.uint64(q * stride)] = drow[q]
                for i in range(kh):  # dweight: dout's rows against the x rows kernel row i read
                    for y in range(Ho):
                        u = y * stride + i * rate - ph
                        if 0 <= u < H:
                            _dots_row(db, y * dwidth + dleft, xb, u * width, offs, ncols, dwf, (o * kh + i) * kw)
                for r in range(H):  # dx, row by row
                    v = r + ph  # kernel row i brings dout row y with y * stride = v - i * rate
                    if kh == 3 and kw == 3 and stride == 1 and v - 2 * rate >= 0 and v < Ho:
                        _taps_3x3(acc, db, v * dwidth, (v - rate) * dwidth, (v - 2 * rate) * dwidth, wf, o * 9,
                                  doffs, dcols)
                    else:
                        acc[:] = 0
                        for i in range(kh):
                            vi = v - i * rate
                            if vi >= 0 and vi % stride == 0 and vi // stride < Ho:
                                _taps_row(acc, db, (vi // stride) * dwidth, wf, (o * kh + i) * kw, doffs, dcols)
                    xr = np.uint64(((n * C + c) * H + r) * W)
                    for q in range(W):
                        dxf[xr + np.uint64(q)] += acc[q]


_POOL = [None, 0, 0]  # a ThreadPoolExecutor, its workers, the process it was made in


def _split(kernel, total, threads, *args):
    """kernel(*args, lo, hi) over [0, total) in min(threads, total) contiguous chunks: the first on the
    calling thread, the others on a pool's threads (the kernels release the GIL); returns when all are done."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    T = 1 if numba.config.DISABLE_JIT else max(1, min(threads, total))
    bounds = [t * total // T for t in range(T + 1)]
    futures, first_done = [], False
    if T > 1 and not getattr(kernel, "signatures", True):
        # nothing compiled (or loaded from the cache) yet in this process: the calling thread does that alone,
        # before any worker asks for the same specialisation
        kernel(*args, bounds[0], bounds[1])
        first_done = True
    if T > 1:
        if _POOL[1] < T - 1 or _POOL[2] != os.getpid():  # a forked child does not inherit the workers
            _POOL[:] = [ThreadPoolExecutor(T - 1, thread_name_prefix="minideeplab-depthwise"), T - 1, os.getpid()]
        futures = [_POOL[0].submit(kernel, *args, bounds[t], bounds[t + 1]) for t in range(1, T)]
    if not first_done:
        kernel(*args, bounds[0], bounds[1])
    for f in futures:
        f.result()


def depthwise_conv2d(x, weight, bias, rate, stride, ph, pw, Ho, Wo, threads=None):
    """The depthwise forward (C == groups) on validated, C-contiguous arguments; bias (Cout,) or None;
    ``threads`` chunks of planes (None: numba's thread count)."""
    N, C = x.shape[:2]
    Cout = weight.shape[0]
    out = np.empty((N, Cout, Ho, Wo), dtype=x.dtype)
    b = np.zeros(Cout, x.dtype) if bias is None else np.ascontiguousarray(bias)
    _split(_depthwise_forward, N * C, numba.get_num_threads() if threads is None else threads,
           x, weight, b, out, rate, stride, ph, pw)
    return out


def depthwise_conv2d_backward(dout, x, weight, rate, stride, ph, pw, threads=None):
    """(dx, dweight) of the depthwise conv on validated, C-contiguous arguments; ``threads`` chunks of
    channels (None: numba's thread count)."""
    dx, dweight = np.zeros_like(x), np.zeros_like(weight)
    _split(_depthwise_backward, x.shape[1], numba.get_num_threads() if threads is None else threads,
           dout, x, weight, dx, dweight, rate, stride, ph, pw)
    return dx, dweight


@numba.njit(cache=True)
def _im2col(x, n, col, y0, ny, Wo, kh, kw, rate, stride, ph, pw):
    """col[(c, i, j), (y, q)] = xpad[n, c, (y0+y)*stride + i*rate, q*stride + j*rate] for output rows
    [y0, y0+ny): the rows of K = C*kh*kw are ordered as weight.reshape(Cout, K), padding reads 0."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = col[(c * kh + i) * kw + j]
                off = j * rate - pw
                xlo, xhi = _tap_range(W, Wo, off, stride)
                for y in range(ny):
                    iy = (y0 + y) * stride + i * rate - ph
                    seg = row[y * Wo:(y + 1) * Wo]
                    if iy < 0 or iy >= H or xhi <= xlo:
                        seg[:] = 0
                        continue
                    seg[:xlo] = 0
                    seg[xhi:] = 0
                    if stride == 1:
                        seg[xlo:xhi] = x[n, c, iy, xlo + off:xhi + off]
                    else:
                        xrow = x[n, c, iy]
                        for q in range(xlo, xhi):
                            seg[q] = xrow[q * stride + off]


@numba.njit(cache=True)
def _affine_act(out, scale, shift, residual, relu):
    """In place, one pass: out[n, c] = out[n, c] * scale[c] + shift[c] (+ residual[n, c]), then max(., 0)
    with ``relu``. out, residual (N, C, P); residual with N == 0: none."""
    N, C, P = out.shape
    res = residual.shape[0] > 0
    for n in range(N):
        for c in range(C):
            s, b = scale[c], shift[c]
            o = out[n, c]
            if res:
                r = residual[n, c]
                for p in range(P):
                    v = o[p] * s + b + r[p]
                    o[p] = v if (v > 0 or not relu or v != v) else 0.0  # v != v: NaN stays NaN, as torch
            else:
                for p in range(P):
                    v = o[p] * s + b
                    o[p] = v if (v > 0 or not relu or v != v) else 0.0


# ---------------------------------------------------------------------------------------------
# GEMM path (any groups with more than one input channel per group, any stride)


def _init_out(x, wt, bias, rate, ph, pw, groups, Ho, Wo):
    """A fresh output holding the bias, or, when the conv has a centre tap that reads the whole
    input unshifted (stride 1, "same"), that tap's GEMM written straight into it: one pass saved."""
    N, C, H, W = x.shape
    kh, kw, Cout, cin = wt.shape
    cout = Cout // groups
    out = np.empty((N, Cout, Ho, Wo), dtype=x.dtype)
    centre = [(i, j) for i in range(kh) for j in range(kw) if i * rate == ph and j * rate == pw]
    if not (centre and (H, W) == (Ho, Wo)):
        out[...] = 0 if bias is None else bias[None, :, None, None]
        return out, None
    i, j = centre[0]
    x2, out2 = x.reshape(N, C, H * W), out.reshape(N, Cout, H * W)
    for g in range(groups):
        for n in range(N):
            np.matmul(wt[i, j, g * cout:(g + 1) * cout], x2[n, g * cin:(g + 1) * cin],
                      out=out2[n, g * cout:(g + 1) * cout])
    if bias is not None:
        out += bias[None, :, None, None]
    return out, (i, j)


def _columns(x, c0, cin, lo, hi, off, buf):
    """The input columns [lo + off, hi + off) of x, all rows, as a (cin, (H, N, hi - lo)) matrix:
    a view of x when that is already its layout, else gathered into ``buf``."""
    N, C, H, W = x.shape
    if N == 1 and off == 0 and (lo, hi) == (0, W):
        return x.reshape(C, H * W)[c0:c0 + cin]
    b = buf[:cin * H * N * (hi - lo)].reshape(cin, H * N * (hi - lo))
    _gather(x, b, c0, 0, H, lo, hi - lo, 0, off, 1)
    return b


def _forward_stride1(x, weight, bias, rate, ph, pw, groups, Ho, Wo):
    """Stride 1, one GEMM per tap that reads real input. All taps of kernel column j read the same
    input columns, shifted by whole rows: gather those columns once (for every row) and each tap of
    the column is a row range of that matrix, a view. ph/pw may be negative (the input gradient
    calls this with a cropping "padding")."""
    N, C, H, W = x.shape
    Cout, cin, kh, kw = weight.shape
    cout = Cout // groups
    rows = _tap_ranges(H, Ho, kh, rate, 1, ph)
    cols = _tap_ranges(W, Wo, kw, rate, 1, pw)
    wt = np.ascontiguousarray(weight.transpose(2, 3, 0, 1))  # (kh, kw, Cout, cin): one GEMM operand per tap
    out, done = _init_out(x, wt, bias, rate, ph, pw, groups, Ho, Wo)
    widest = max(hi - lo for lo, hi in cols)
    xbuf = np.empty(cin * H * N * widest, dtype=x.dtype)
    gbuf = np.empty(cout * Ho * N * widest, dtype=x.dtype)
    for g in range(groups):
        for j, (xlo, xhi) in enumerate(cols):
            nx = xhi - xlo
            if nx <= 0:
                continue  # this kernel column only ever reads padding
            xc = _columns(x, g * cin, cin, xlo, xhi, j * rate - pw, xbuf)
            pix = N * nx  # matrix columns per image row
            for i, (ylo, yhi) in enumerate(rows):
                if yhi <= ylo or (i, j) == done:
                    continue
                dy = i * rate - ph
                r = np.matmul(wt[i, j, g * cout:(g + 1) * cout], xc[:, (ylo + dy) * pix:(yhi + dy) * pix],
                              out=gbuf[:cout * (yhi - ylo) * pix].reshape(cout, (yhi - ylo) * pix))
                _scatter_add(out, r, g * cout, ylo, yhi - ylo, xlo, nx, 0, 0, 1)
    return out


def _backward_stride1(dout, x, weight, rate, ph, pw, groups):
    """dweight by the same column trick (dweight_t = dout[R_t] @ x[R_t shifted]^T), dx as a stride-1
    conv of dout with the flipped kernel."""
    N, C, H, W = x.shape
    Cout, cin, kh, kw = weight.shape
    Ho, Wo = dout.shape[2:]
    cout = Cout // groups
    dweight = np.zeros((kh, kw, Cout, cin), dtype=x.dtype)
    rows = _tap_ranges(H, Ho, kh, rate, 1, ph)
    cols = _tap_ranges(W, Wo, kw, rate, 1, pw)
    widest = max(hi - lo for lo, hi in cols)
    xbuf = np.empty(cin * H * N * widest, dtype=x.dtype)
    dbuf = np.empty(cout * Ho * N * widest, dtype=x.dtype)
    for g in range(groups):
        for j, (xlo, xhi) in enumerate(cols):
            if xhi <= xlo:
                continue
            xc = _columns(x, g * cin, cin, xlo, xhi, j * rate - pw, xbuf)
            dc = _columns(dout, g * cout, cout, xlo, xhi, 0, dbuf)
            pix = N * (xhi - xlo)
            for i, (ylo, yhi) in enumerate(rows):
                if yhi <= ylo:
                    continue
                dy = i * rate - ph
                np.matmul(dc[:, ylo * pix:yhi * pix], xc[:, (ylo + dy) * pix:(yhi + dy) * pix].T,
                          out=dweight[i, j, g * cout:(g + 1) * cout])
    dx = _forward_stride1(dout, _flip(weight, groups), None, rate,
                          rate * (kh - 1) - ph, rate * (kw - 1) - pw, groups, H, W)
    return dx, np.ascontiguousarray(dweight.transpose(2, 3, 0, 1))


def _tap_plan(x, weight, rate, stride, ph, pw, Ho, Wo):
    """What the strided forward and backward share: the weights as one (Cout, cin) matrix per tap
    (kh, kw, Cout, cin), each axis' tap ranges, and the largest tap rectangle in pixels (over the batch)."""
    wt = np.ascontiguousarray(weight.transpose(2, 3, 0, 1))
    rows = _tap_ranges(x.shape[2], Ho, weight.shape[2], rate, stride, ph)
    cols = _tap_ranges(x.shape[3], Wo, weight.shape[3], rate, stride, pw)
    biggest = x.shape[0] * max(hi - lo for lo, hi in rows) * max(hi - lo for lo, hi in cols)
    return wt, rows, cols, biggest


def _forward_strided(x, weight, bias, rate, stride, ph, pw, groups, Ho, Wo):
    """Any stride: per tap, gather the input it reads (im2col restricted to that tap's rectangle),
    one GEMM, add into the output."""
    N = x.shape[0]
    Cout, cin = weight.shape[:2]
    cout = Cout // groups
    out = np.empty((N, Cout, Ho, Wo), dtype=x.dtype)
    out[...] = 0 if bias is None else bias[None, :, None, None]
    wt, rows, cols, biggest = _tap_plan(x, weight, rate, stride, ph, pw, Ho, Wo)
    buf = np.empty(cin * biggest, dtype=x.dtype)
    gbuf = np.empty(cout * biggest, dtype=x.dtype)
    for g in range(groups):
        for i, (ylo, yhi) in enumerate(rows):
            for j, (xlo, xhi) in enumerate(cols):
                ny, nx = yhi - ylo, xhi - xlo
                if ny <= 0 or nx <= 0:
                    continue  # the tap only ever reads padding
                b = buf[:cin * N * ny * nx].reshape(cin, N * ny * nx)
                _gather(x, b, g * cin, ylo, ny, xlo, nx, i * rate - ph, j * rate - pw, stride)
                r = np.matmul(wt[i, j, g * cout:(g + 1) * cout], b, out=gbuf[:cout * N * ny * nx].reshape(cout, -1))
                _scatter_add(out, r, g * cout, ylo, ny, xlo, nx, 0, 0, 1)
    return out


def _backward_strided(dout, x, weight, rate, stride, ph, pw, groups):
    """Any stride, per tap: dweight_t = D_t @ X_t^T and dX_t = W_t^T @ D_t, scattered back (col2im)."""
    N = x.shape[0]
    Cout, cin, kh, kw = weight.shape
    cout = Cout // groups
    dx = np.zeros_like(x)
    dweight = np.zeros((kh, kw, Cout, cin), dtype=x.dtype)
    wt, rows, cols, biggest = _tap_plan(x, weight, rate, stride, ph, pw, *dout.shape[2:])
    buf = np.empty(cin * biggest, dtype=x.dtype)
    dbuf = np.empty(cout * biggest, dtype=x.dtype)
    for g in range(groups):
        for i, (ylo, yhi) in enumerate(rows):
            for j, (xlo, xhi) in enumerate(cols):
                ny, nx = yhi - ylo, xhi - xlo
                if ny <= 0 or nx <= 0:
                    continue
                m = N * ny * nx
                dy, dxo = i * rate - ph, j * rate - pw
                b = buf[:cin * m].reshape(cin, m)
                _gather(x, b, g * cin, ylo, ny, xlo, nx, dy, dxo, stride)
                d = dbuf[:cout * m].reshape(cout, m)
                _gather(dout, d, g * cout, ylo, ny, xlo, nx, 0, 0, 1)
                np.matmul(d, b.T, out=dweight[i, j, g * cout:(g + 1) * cout])
                np.matmul(wt[i, j, g * cout:(g + 1) * cout].T, d, out=b)  # b is free again: reuse it
                _scatter_add(dx, b, g * cin, ylo, ny, xlo, nx, dy, dxo, stride)
    return dx, np.ascontiguousarray(dweight.transpose(2, 3, 0, 1))


def _flip(weight, groups):
    """The kernel of the stride-1 input gradient: taps reversed, in/out channels swapped per group."""
    Cout, cin, kh, kw = weight.shape
    w = weight.reshape(groups, Cout // groups, cin, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    return np.ascontiguousarray(w).reshape(groups * cin, Cout // groups, kh, kw)


IM2COL_BYTES = 32 * 2 ** 20  # the im2col buffer's size: output rows are done in bands that fit
IM2COL_MIN_REAL = 0.85       # im2col when at least this share of the kernel's reads is real input


def _real_share(H, W, Ho, Wo, kh, kw, rate, stride, ph, pw):
    """The share of the kh*kw*Ho*Wo reads of a conv that fall on real input, not padding."""
    rows = sum(hi - lo for lo, hi in _tap_ranges(H, Ho, kh, rate, stride, ph))
    cols = sum(hi - lo for lo, hi in _tap_ranges(W, Wo, kw, rate, stride, pw))
    return rows * cols / (kh * kw * Ho * Wo)


def use_im2col(x, weight, rate, stride, ph, pw, groups, Ho, Wo):
    kh, kw = weight.shape[2:]
    if groups != 1 or (kh, kw, stride, ph, pw) == (1, 1, 1, 0, 0):
        return False  # grouped: the tap paths; a plain 1x1 is one GEMM already (``_init_out``)
    return _real_share(x.shape[2], x.shape[3], Ho, Wo, kh, kw, rate, stride, ph, pw) >= IM2COL_MIN_REAL


def _forward_im2col(x, weight, rate, stride, ph, pw, Ho, Wo, out):
    """out[n] = weight (Cout, K) @ im2col(x[n]) (K, Ho*Wo), K = C*kh*kw, in bands of output rows so that
    the column buffer stays within IM2COL_BYTES; each band's GEMM writes straight into ``out``."""
    N, C = x.shape[:2]
    Cout, _, kh, kw = weight.shape
    K = C * kh * kw
    w2 = weight.reshape(Cout, K)
    band = max(1, min(Ho, IM2COL_BYTES // (K * Wo * x.itemsize)))
    band = -(-Ho // -(-Ho // band))  # same number of bands, rows spread over them: no thin last band (slow GEMM)
    buf = np.empty(K * band * Wo, dtype=x.dtype)
    for n in range(N):
        o2 = out[n].reshape(Cout, Ho * Wo)
        for y0 in range(0, Ho, band):
            ny = min(band, Ho - y0)
            col = buf[:K * ny * Wo].reshape(K, ny * Wo)
            _im2col(x, n, col, y0, ny, Wo, kh, kw, rate, stride, ph, pw)
            np.matmul(w2, col, out=o2[:, y0 * Wo:(y0 + ny) * Wo])
    return out


def _affine(out, scale, shift, residual, relu):
    """``_affine_act`` on (N, C, H, W) arrays; under NUMBA_DISABLE_JIT the same in whole-array NumPy."""
    N, C = out.shape[:2]
    if numba.config.DISABLE_JIT:  # the loop would run per pixel in Python
        out *= scale[:, None, None]
        out += shift[:, None, None]
        if residual is not None:
            out += residual
        if relu:
            np.maximum(out, 0, out=out)
        return out
    res = np.empty((0, 0, 0), out.dtype) if residual is None else np.ascontiguousarray(residual).reshape(N, C, -1)
    _affine_act(out.reshape(N, C, -1), scale, shift, res, bool(relu))
    return out


def _conv(x, weight, bias, rate, stride, ph, pw, groups, Ho, Wo):
    """The fast forward on validated, contiguous arguments (``atrous_conv2d`` without the checks)."""
    N, C = x.shape[:2]
    Cout = weight.shape[0]
    if C == groups:  # depthwise: one input channel per group
        return depthwise_conv2d(x, weight, bias, rate, stride, ph, pw, Ho, Wo)
    if use_im2col(x, weight, rate, stride, ph, pw, groups, Ho, Wo):
        out = _forward_im2col(x, weight, rate, stride, ph, pw, Ho, Wo, np.empty((N, Cout, Ho, Wo), dtype=x.dtype))
        if bias is not None:
            out += bias[None, :, None, None]
        return out
    if stride == 1:
        return _forward_stride1(x, weight, bias, rate, ph, pw, groups, Ho, Wo)
    return _forward_strided(x, weight, bias, rate, stride, ph, pw, groups, Ho, Wo)


def conv2d_fused(x, weight, scale, shift, rate=1, stride=1, padding="same", groups=1, residual=None, relu=False):
    """Eval: act(conv(x) * scale + shift (+ residual)), no bias in the conv, no cache.

    x (N, C, H, W), weight (Cout, C/groups, kh, kw), scale and shift (Cout,), residual (N, Cout, Ho, Wo)
    or None -> (N, Cout, Ho, Wo). A conv followed by eval batch norm is scale = gamma / sqrt(var + eps),
    shift = beta - running_mean * scale; a conv with bias b alone is scale = 1, shift = b.
    """
    fn = "conv2d_fused"
    N, C, H, W, Cout, kh, kw, ph, pw, Ho, Wo = check_conv2d(fn, x, weight, None, rate, stride, padding, groups)
    for name, a in (("scale", scale), ("shift", shift)):
        if not isinstance(a, np.ndarray) or a.dtype != x.dtype or a.shape != (Cout,):
            got = f"{a.shape} {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"{fn}: {name} is {got}, expected ({Cout},) {x.dtype} (one per output channel)")
    if not isinstance(relu, (bool, np.bool_)):
        raise ValueError(f"{fn}: relu must be True or False, got {relu!r}")
    if residual is not None and (not isinstance(residual, np.ndarray) or residual.dtype != x.dtype
                                 or residual.shape != (N, Cout, Ho, Wo)):
        got = f"{residual.shape} {residual.dtype}" if isinstance(residual, np.ndarray) else type(residual).__name__
        raise ValueError(f"{fn}: residual is {got}, expected {(N, Cout, Ho, Wo)} {x.dtype} (the conv's output)")
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    out = _conv(x, weight, None, int(rate), int(stride), ph, pw, int(groups), Ho, Wo)
    return _affine(out, np.ascontiguousarray(scale), np.ascontiguousarray(shift), residual, relu)


# ---------------------------------------------------------------------------------------------
# public API


def atrous_conv2d(x, weight, bias=None, rate=1, stride=1, padding="same", groups=1):
    """Fast atrous conv. x (N, C, H, W), weight (Cout, C/groups, kh, kw), bias (Cout,) or None
    -> (N, Cout, Ho, Wo), dtype of x."""
    N, C, H, W, Cout, kh, kw, ph, pw, Ho, Wo = check_conv2d(
        "atrous_conv2d", x, weight, bias, rate, stride, padding, groups)
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    return _conv(x, weight, bias, int(rate), int(stride), ph, pw, int(groups), Ho, Wo)


def atrous_conv2d_backward(dout, x, weight, rate=1, stride=1, padding="same", groups=1):
    """Fast gradients: dout (N, Cout, Ho, Wo) -> (dx, dweight, dbias) shaped like x, weight, (Cout,)."""
    N, C, H, W, Cout, kh, kw, ph, pw, Ho, Wo = check_conv2d(
        "atrous_conv2d_backward", x, weight, None, rate, stride, padding, groups, dout=dout)
    dout, x, weight = np.ascontiguousarray(dout), np.ascontiguousarray(x), np.ascontiguousarray(weight)
    if C == groups:
        dx, dweight = depthwise_conv2d_backward(dout, x, weight, int(rate), int(stride), ph, pw)
        return dx, dweight, dout.sum(axis=(0, 2, 3))
    if stride == 1:
        dx, dweight = _backward_stride1(dout, x, weight, int(rate), ph, pw, int(groups))
    else:
        dx, dweight = _backward_strided(dout, x, weight, int(rate), int(stride), ph, pw, int(groups))
    return dx, dweight, dout.sum(axis=(0, 2, 3))
