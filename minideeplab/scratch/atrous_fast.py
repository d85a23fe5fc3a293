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
* depthwise (one input channel per group): no GEMM worth the name, a numba loop per channel.
* im2col (``_forward_im2col``): when few of the kernel's reads fall in the padding (a backbone conv,
  the 7x7 stem, any stride), one GEMM over K = C*kh*kw per band of output rows, written straight
  into the output: no per-tap partial sums to add up. Bands bound the column buffer (``IM2COL_BYTES``).
* ``conv2d_fused``: the eval unit act(conv(x) * scale + shift (+ residual)): the conv's GEMMs, then
  one in-place pass (``_affine_act``) for eval batch norm, the residual sum and the ReLU. No cache.

The numba kernels are serial on purpose: BLAS already uses every core, and a numba parallel region
(OpenMP) next to OpenBLAS's threads made both spin against each other (measured: 8 ms instead of 1 ms for
a gather + GEMM + scatter on 2 cores). The serial copies cost a few percent of the GEMMs.
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


@numba.njit(cache=True)
def _depthwise_forward(x, weight, out, rate, stride, ph, pw):
    """out[n, o] += sum_taps weight[o, 0, i, j] * x[n, o // m] (shifted), m = Cout / C outputs per channel.
    ``out`` comes in holding the bias."""
    N, C, H, W = x.shape
    Cout, _, kh, kw = weight.shape
    Ho, Wo = out.shape[2], out.shape[3]
    m = Cout // C
    for n in range(N):
        for o in range(Cout):
            c = o // m
            for i in range(kh):
                dy = i * rate - ph
                ylo, yhi = _tap_range(H, Ho, dy, stride)
                for j in range(kw):
                    dx = j * rate - pw
                    xlo, xhi = _tap_range(W, Wo, dx, stride)
                    wv = weight[o, 0, i, j]
                    for y in range(ylo, yhi):
                        # 1-D slices indexed from 0 (no negative-index checks); with stride 1 the slice
                        # has no step, so numba knows it is contiguous and the loop vectorises (3x here).
                        # The branches keep separate names: one variable for both would lose that.
                        orow = out[n, o, y, xlo:xhi]
                        if stride == 1:
                            xrow1 = x[n, c, y + dy, xlo + dx:xhi + dx]
                            for q in range(xhi - xlo):
                                orow[q] += wv * xrow1[q]
                        else:
                            xrow = x[n, c, y * stride + dy, xlo * stride + dx:(xhi - 1) * stride + dx + 1:stride]
                            for q in range(xhi - xlo):
                                orow[q] += wv * xrow[q]


# reassociation lets LLVM vectorise the dot products (it changes the summation order, nothing else)
@numba.njit(cache=True, fastmath={"reassoc", "nsz", "contract"})
def _depthwise_backward(dout, x, weight, dx, dweight, rate, stride, ph, pw):
    """dx (zeroed on entry) and dweight for the depthwise conv; one (n, c) plane at a time."""
    N, C, H, W = x.shape
    Cout, _, kh, kw = weight.shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    m = Cout // C
    for o in range(Cout):
        c = o // m
        for i in range(kh):
            dy = i * rate - ph
            ylo, yhi = _tap_range(H, Ho, dy, stride)
            for j in range(kw):
                ox = j * rate - pw
                xlo, xhi = _tap_range(W, Wo, ox, stride)
                wv = weight[o, 0, i, j]
                acc = 0.0
                for n in range(N):
                    for y in range(ylo, yhi):
                        drow = dout[n, o, y, xlo:xhi]
                        if stride == 1:  # contiguous slices, as in the forward
                            xrow1, dxrow1 = x[n, c, y + dy, xlo + ox:xhi + ox], dx[n, c, y + dy, xlo + ox:xhi + ox]
                            for q in range(xhi - xlo):
                                acc += drow[q] * xrow1[q]
                                dxrow1[q] += wv * drow[q]
                        else:
                            cols = slice(xlo * stride + ox, (xhi - 1) * stride + ox + 1, stride)
                            xrow, dxrow = x[n, c, y * stride + dy, cols], dx[n, c, y * stride + dy, cols]
                            for q in range(xhi - xlo):
                                acc += drow[q] * xrow[q]
                                dxrow[q] += wv * drow[q]
                dweight[o, 0, i, j] = acc


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
        out = np.empty((N, Cout, Ho, Wo), dtype=x.dtype)
        out[...] = 0 if bias is None else bias[None, :, None, None]
        _depthwise_forward(x, weight, out, rate, stride, ph, pw)
        return out
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
        dx, dweight = np.zeros_like(x), np.empty_like(weight)
        _depthwise_backward(dout, x, weight, dx, dweight, int(rate), int(stride), ph, pw)
        return dx, dweight, dout.sum(axis=(0, 2, 3))
    if stride == 1:
        dx, dweight = _backward_stride1(dout, x, weight, int(rate), ph, pw, int(groups))
    else:
        dx, dweight = _backward_strided(dout, x, weight, int(rate), int(stride), ph, pw, int(groups))
    return dx, dweight, dout.sum(axis=(0, 2, 3))
