"""The scratch layers against their PyTorch twins: forwards against torch, backwards against autograd."""

import numpy as np
import pytest
import torch

from minideeplab.reference import layers as ref
from minideeplab.scratch import layers as scratch

F32, F64 = np.float32, np.float64
DTYPES = pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
TOL = {F32: 1e-5, F64: 1e-12}   # forward, relative to the output's scale
GRAD_TOL = {F32: 1e-5, F64: 1e-10}


def _rel(a, b):
    """max |a - b| relative to max |b| (absolute when b is all zeros)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.max(np.abs(b)) if b.size else 0.0
    return np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0)


def _close(got, expected, dtype, tol=TOL):
    got = np.asarray(got)
    assert got.dtype == dtype, got.dtype
    assert _rel(got, expected) <= tol[dtype]


def _t(a, grad=False):
    """A torch copy of a numpy array (requires_grad for the inputs autograd differentiates)."""
    return torch.tensor(np.array(a)).requires_grad_(grad)


def _randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- batch norm

BN_SHAPES = [(2, 3, 5, 7), (4, 2, 1, 1), (1, 5, 6, 4)]


def _bn_inputs(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (3 * rng.standard_normal(shape) + rng.standard_normal((1, C, 1, 1))).astype(dtype)
    gamma, beta = _randn(rng, C, dtype), _randn(rng, C, dtype)
    running_mean, running_var = _randn(rng, C, dtype), rng.uniform(0.5, 2, C).astype(dtype)
    return rng, x, gamma, beta, running_mean, running_var


@DTYPES
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_batch_norm_training(dtype, shape, momentum):
    rng, x, gamma, beta, rm, rv = _bn_inputs(shape, dtype, seed=sum(shape))
    rm_t, rv_t = _t(rm), _t(rv)
    # two steps: the second starts from the running statistics the first left behind
    for step in range(2):
        xs = x if step == 0 else (x * 0.5 + 1).astype(dtype)
        y, cache = scratch.batch_norm2d(xs, gamma, beta, rm, rv, True, momentum=momentum)
        xt, gt, bt = _t(xs, True), _t(gamma, True), _t(beta, True)
        yt = ref.batch_norm2d(xt, gt, bt, rm_t, rv_t, True, momentum=momentum)
        _close(y, yt.detach().numpy(), dtype)
        _close(rm, rm_t.numpy(), dtype)
        _close(rv, rv_t.numpy(), dtype)
        assert not np.allclose(rv, 1)  # the update happened (starting values were random)

        dy = _randn(rng, y.shape, dtype)
        yt.backward(_t(dy))
        for got, t in zip(scratch.batch_norm2d_backward(dy, cache), (xt, gt, bt)):
            _close(got, t.grad.numpy(), dtype, GRAD_TOL)


def test_batch_norm_running_var_is_unbiased():
    """The running variance takes the unbiased batch variance, the normalisation the biased one."""
    x = np.array([1.0, 3.0]).reshape(2, 1, 1, 1)  # mean 2, biased var 1, unbiased var 2
    rm, rv = np.zeros(1), np.zeros(1)
    y, _ = scratch.batch_norm2d(x, np.ones(1), np.zeros(1), rm, rv, True, momentum=0.5, eps=1e-12)
    np.testing.assert_allclose(rm, [1.0])    # 0.5 * 2
    np.testing.assert_allclose(rv, [1.0])    # 0.5 * 2, not 0.5 * 1
    np.testing.assert_allclose(y.ravel(), [-1.0, 1.0], rtol=1e-9)


@DTYPES
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_eval(dtype, shape):
    rng, x, gamma, beta, rm, rv = _bn_inputs(shape, dtype, seed=1 + sum(shape))
    rm0, rv0 = rm.copy(), rv.copy()
    y, cache = scratch.batch_norm2d(x, gamma, beta, rm, rv, False)
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)  # eval leaves them alone
    xt, gt, bt = _t(x, True), _t(gamma, True), _t(beta, True)
    yt = ref.batch_norm2d(xt, gt, bt, _t(rm), _t(rv), False)
    _close(y, yt.detach().numpy(), dtype)
    dy = _randn(rng, y.shape, dtype)
    yt.backward(_t(dy))
    dx, dgamma, dbeta = scratch.batch_norm2d_backward(dy, cache)
    for got, t in zip((dx, dgamma, dbeta), (xt, gt, bt)):
        _close(got, t.grad.numpy(), dtype, GRAD_TOL)
    _close(dx, dy * (gamma / np.sqrt(rv + dtype(1e-5)))[:, None, None], dtype)


def test_batch_norm_large_offset_is_stable():
    """A channel far from 0 (mean 1e4, spread 1): the two-pass variance keeps full precision."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 6, 5)) + 1e4
    C = x.shape[1]
    y, _ = scratch.batch_norm2d(x, np.ones(C), np.zeros(C), np.zeros(C), np.ones(C), True)
    yt = ref.batch_norm2d(_t(x), _t(np.ones(C)), _t(np.zeros(C)), _t(np.zeros(C)), _t(np.ones(C)), True)
    assert _rel(y, yt.numpy()) < 1e-9


# --------------------------------------------------------------------------- relu

@DTYPES
def test_relu(dtype):
    rng = np.random.default_rng(4)
    x = np.round(rng.standard_normal((2, 3, 5, 7)), 1).astype(dtype)  # rounding puts exact zeros in
    assert (x == 0).any()
    y = scratch.relu(x)
    xt = _t(x, True)
    yt = ref.relu(xt)
    _close(y, yt.detach().numpy(), dtype, {F32: 0, F64: 0})
    dy = _randn(rng, x.shape, dtype)
    yt.backward(_t(dy))
    _close(scratch.relu_backward(dy, x), xt.grad.numpy(), dtype, {F32: 0, F64: 0})  # 0 at x == 0, as torch


# --------------------------------------------------------------------------- max pooling

POOL_CASES = [  # (N, C, H, W, kernel, stride, padding, ceil_mode)
    (2, 3, 9, 11, 3, 2, 1, False),   # ResNet stem
    (2, 3, 10, 7, 3, 2, 1, True),
    (1, 2, 8, 9, 2, 2, 0, False),    # VGG
    (2, 2, 7, 9, 2, 2, 0, True),     # ceil_mode: the last window hangs over the edge
    (1, 3, 6, 5, 3, 1, 1, False),    # DeepLab-LargeFOV
    (2, 2, 11, 8, 3, 3, 1, True),
    (1, 1, 3, 4, 3, 2, 0, True),
]


def _pool_input(case, dtype, ties, seed):
    N, C, H, W = case[:4]
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: most windows hold several maxima
        return rng, rng.integers(-1, 2, (N, C, H, W)).astype(dtype)
    return rng, _randn(rng, (N, C, H, W), dtype)


@DTYPES
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", range(len(POOL_CASES)))
def test_max_pool(dtype, ties, case):
    k, s, p, ceil = POOL_CASES[case][4:]
    rng, x = _pool_input(POOL_CASES[case], dtype, ties, seed=case)
    y, cache = scratch.max_pool2d(x, k, s, p, ceil)
    xt = _t(x, True)
    yt, it = ref.max_pool2d(xt, k, s, p, ceil)
    _close(y, yt.detach().numpy(), dtype, {F32: 0, F64: 0})
    assert np.array_equal(cache.indices, it.numpy())  # the same pixel wins every tie
    yi = scratch.max_pool2d_infer(x, k, s, p, ceil)  # eval: the max alone, no argmax
    assert yi.dtype == dtype
    _close(yi, yt.detach().numpy(), dtype, {F32: 0, F64: 0})
    dy = _randn(rng, y.shape, dtype)
    yt.backward(_t(dy))
    _close(scratch.max_pool2d_backward(dy, cache), xt.grad.numpy(), dtype, GRAD_TOL)


def test_max_pool_inf_and_nan():
    """A window of -inf picks its first real pixel (never the padding); a NaN wins, the last one."""
    inf, nan = np.inf, np.nan
    x = np.array([[[[-inf, -inf, 1, 2], [-inf, -inf, 1, 0], [1, 1, 1, 3], [nan, 2, nan, 5]]]])
    for k, s, p in [(3, 2, 1), (3, 1, 1), (2, 2, 0)]:
        y, cache = scratch.max_pool2d(x, k, s, p)
        yt, it = ref.max_pool2d(_t(x), k, s, p)
        np.testing.assert_array_equal(y, yt.numpy())  # NaN == NaN here
        np.testing.assert_array_equal(cache.indices, it.numpy())
        np.testing.assert_array_equal(scratch.max_pool2d_infer(x, k, s, p), yt.numpy())
    assert np.isnan(scratch.max_pool2d(x, 3, 1, 1)[0][0, 0, 3, 1])


@pytest.mark.parametrize("size, k, s, p, ceil, expected", [
    (5, 3, 2, 1, False, 3), (6, 3, 2, 1, True, 4), (6, 2, 2, 0, True, 3), (7, 2, 2, 0, True, 4),
    (7, 2, 2, 0, False, 3), (513, 3, 2, 1, False, 257), (5, 3, 2, 0, True, 2),
])
def test_pool_output_size(size, k, s, p, ceil, expected):
    assert scratch.pool_output_size(size, k, s, p, ceil) == expected
    shape = ref.max_pool2d(torch.zeros(1, 1, size, 3), k, s, p, ceil)[0].shape
    assert shape[2] == expected


# --------------------------------------------------------------------------- global average pooling

@DTYPES
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 1, 1), (3, 2, 9, 4)], ids=str)
def test_global_avg_pool(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    x = _randn(rng, shape, dtype)
    y = scratch.global_avg_pool(x)
    xt = _t(x, True)
    yt = ref.global_avg_pool(xt)
    _close(y, yt.detach().numpy(), dtype)
    dy = _randn(rng, y.shape, dtype)
    yt.backward(_t(dy))
    _close(scratch.global_avg_pool_backward(dy, x.shape), xt.grad.numpy(), dtype, GRAD_TOL)


# --------------------------------------------------------------------------- bilinear resizing

RESIZE_CASES = [  # (H, W) -> size
    ((5, 7), (13, 17)),    # up
    ((17, 13), (5, 6)),    # down
    ((8, 8), (3, 20)),     # down one axis, up the other
    ((9, 11), (9, 11)),    # same size
    ((6, 4), (1, 1)),      # to one pixel
    ((1, 1), (4, 3)),      # from one pixel
    ((65, 65), (513, 513)),  # DeepLab's 8x upsampling of the logits
]


@DTYPES
@pytest.mark.parametrize("align_corners", [True, False], ids=["align", "half-pixel"])
@pytest.mark.parametrize("case", range(len(RESIZE_CASES)))
def test_resize_bilinear(dtype, align_corners, case):
    (H, W), size = RESIZE_CASES[case]
    rng = np.random.default_rng(case)
    x = _randn(rng, (2, 3, H, W), dtype)
    y = scratch.resize_bilinear(x, size, align_corners)
    xt = _t(x, True)
    yt = ref.resize_bilinear(xt, size, align_corners)
    _close(y, yt.detach().numpy(), dtype)
    yi = scratch.resize_bilinear_infer(x, size, align_corners)  # eval: from the 2 x 2 neighbours
    assert yi.dtype == dtype
    _close(yi, yt.detach().numpy(), dtype)
    dy = _randn(rng, y.shape, dtype)
    yt.backward(_t(dy))
    dx = scratch.resize_bilinear_backward(dy, x.shape, align_corners)
    _close(dx, xt.grad.numpy(), dtype, {F32: 1e-5, F64: 1e-10})


@pytest.mark.parametrize("align_corners", [True, False], ids=["align", "half-pixel"])
def test_resize_bilinear_infer_keeps_nan_local_as_torch(align_corners):
    """The eval resize mixes only the 2 x 2 neighbours: a NaN input pixel makes NaN exactly the outputs
    torch's makes NaN (the matrices' 0 * NaN would spread it along whole rows and columns)."""
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6))
    x[0, 0, 2, 3], x[1, 0, 4, 1] = np.nan, np.inf
    y = scratch.resize_bilinear_infer(x, (13, 11), align_corners)
    yt = ref.resize_bilinear(torch.from_numpy(x), (13, 11), align_corners).numpy()
    assert np.array_equal(np.isnan(y), np.isnan(yt)) and np.array_equal(np.isinf(y), np.isinf(yt))
    assert 0 < np.isnan(y).sum() < 13 * 11
    finite = np.isfinite(yt)
    assert np.abs(y[finite] - yt[finite]).max() < 1e-12


@pytest.mark.parametrize("align_corners", [True, False])
def test_bilinear_matrix(align_corners):
    A = scratch.bilinear_matrix(7, 12, align_corners)
    assert A.shape == (12, 7) and (A >= 0).all()
    np.testing.assert_allclose(A.sum(axis=1), 1, rtol=1e-14)  # a convex mix of the input pixels
    np.testing.assert_allclose(scratch.bilinear_matrix(7, 7, align_corners), np.eye(7), atol=1e-15)
    assert (A[0, 0], A[-1, -1]) == (1.0, 1.0)  # both conventions keep the end pixels at the ends
    if align_corners:
        np.testing.assert_allclose(A @ np.arange(7.0), np.linspace(0, 6, 12), rtol=1e-14)  # exact on a ramp


# --------------------------------------------------------------------------- concat

@DTYPES
@pytest.mark.parametrize("axis, shapes", [
    (1, [(2, 3, 5, 7), (2, 1, 5, 7), (2, 4, 5, 7)]),
    (0, [(1, 2, 3, 4), (2, 2, 3, 4)]),
    (-1, [(2, 2, 3, 4), (2, 2, 3, 1)]),
    (1, [(2, 5, 3, 3)]),
])
def test_concat(dtype, axis, shapes):
    rng = np.random.default_rng(len(shapes))
    xs = [_randn(rng, s, dtype) for s in shapes]
    y = scratch.concat(xs, axis=axis)
    xts = [_t(x, True) for x in xs]
    yt = ref.concat(xts, axis=axis)
    _close(y, yt.detach().numpy(), dtype, {F32: 0, F64: 0})
    dy = _randn(rng, y.shape, dtype)
    yt.backward(_t(dy))
    grads = scratch.concat_backward(dy, [s[axis] for s in shapes], axis=axis)
    assert len(grads) == len(xs)
    for g, xt in zip(grads, xts):
        _close(g, xt.grad.numpy(), dtype, {F32: 0, F64: 0})
    grads[0][...] = 7
    assert not (dy == 7).any()  # the gradients are copies, not views of dy


# --------------------------------------------------------------------------- dropout

@DTYPES
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics(dtype, p):
    x = np.ones((4, 8, 50, 50), dtype=dtype)  # 80 000 values
    y, mask = scratch.dropout(x, p, True, np.random.default_rng(0))
    assert y.dtype == dtype and mask.dtype == dtype and y.shape == x.shape
    dropped = (y == 0).mean()
    assert abs(dropped - p) < 0.01
    assert set(np.unique(y)) == {0, dtype(1) / dtype(1 - p)}  # kept values scaled by 1 / (1 - p)
    assert abs(y.mean() - 1) < 0.03                           # so the mean is kept
    # channels drop independently: two channels' masks differ
    assert not np.array_equal(mask[0, 0], mask[0, 1])


@DTYPES
def test_dropout_against_torch_with_the_same_mask(dtype):
    rng = np.random.default_rng(5)
    x = _randn(rng, (2, 3, 6, 7), dtype)
    p = 0.3
    y, mask = scratch.dropout(x, p, True, np.random.default_rng(1))
    y2, mask2 = scratch.dropout(x, p, True, np.random.default_rng(1))
    assert np.array_equal(mask, mask2) and np.array_equal(y, y2)  # seeded: reproducible
    xt = _t(x, True)
    yt = ref.dropout(xt, p, True, keep=torch.from_numpy(mask != 0))
    _close(y, yt.detach().numpy(), dtype, {F32: 1e-6, F64: 1e-15})
    dy = _randn(rng, x.shape, dtype)
    yt.backward(_t(dy))
    dx = scratch.dropout_backward(dy, mask)
    _close(dx, xt.grad.numpy(), dtype, {F32: 1e-6, F64: 1e-15})
    assert np.array_equal(dx == 0, y == 0)  # the backward drops exactly what the forward dropped


@DTYPES
def test_dropout_eval_and_p0(dtype):
    x = _randn(np.random.default_rng(6), (2, 3, 4, 5), dtype)
    y, mask = scratch.dropout(x, 0.5, False, None)
    assert mask is None and np.array_equal(y, x) and y is not x and y.dtype == dtype
    assert np.array_equal(ref.dropout(_t(x), 0.5, False).numpy(), y)
    dy = _randn(np.random.default_rng(7), x.shape, dtype)
    assert np.array_equal(scratch.dropout_backward(dy, None), dy)
    y0, mask0 = scratch.dropout(x, 0.0, True, np.random.default_rng(0))
    assert np.array_equal(y0, x) and (mask0 == 1).all()


# --------------------------------------------------------------------------- separable conv

SEP_CASES = [  # (N, C, H, W, Cout, k, rate, stride, padding)
    (2, 3, 9, 11, 5, 3, 1, 1, "same"),
    (2, 4, 10, 7, 6, 3, 2, 1, "same"),
    (1, 4, 13, 9, 3, 3, 2, 2, "same"),
    (2, 3, 12, 12, 4, 3, 3, 2, 1),
    (1, 2, 11, 13, 4, 3, 2, 1, "valid"),
    (2, 5, 8, 9, 2, 5, 2, 1, "same"),
]


@DTYPES
@pytest.mark.parametrize("case", range(len(SEP_CASES)))
def test_separable_conv(dtype, case):
    N, C, H, W, Cout, k, rate, stride, padding = SEP_CASES[case]
    rng = np.random.default_rng(10 + case)
    x = _randn(rng, (N, C, H, W), dtype)
    dw, pw = _randn(rng, (C, 1, k, k), dtype), _randn(rng, (Cout, C, 1, 1), dtype)
    kw = dict(rate=rate, padding=padding, stride=stride)
    out = scratch.separable_conv2d(x, dw, pw, **kw)
    ts = [_t(a, True) for a in (x, dw, pw)]
    out_t = ref.separable_conv2d(*ts, **kw)
    _close(out, out_t.detach().numpy(), dtype)
    dout = _randn(rng, out.shape, dtype)
    out_t.backward(_t(dout))
    grads = scratch.separable_conv2d_backward(dout, x, dw, pw, **kw)
    for name, g, t in zip(("dx", "d_depthwise", "d_pointwise"), grads, ts):
        assert g.shape == t.shape, name
        _close(g, t.grad.numpy(), dtype, GRAD_TOL)


# --------------------------------------------------------------------------- cross-entropy

@DTYPES
@pytest.mark.parametrize("ignored", [0.0, 0.3], ids=["none-ignored", "some-ignored"])
@pytest.mark.parametrize("target_dtype", [np.int64, np.int32, np.uint8])
@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["scale1", "scale100"])
def test_cross_entropy(dtype, ignored, target_dtype, scale):
    rng = np.random.default_rng(int(ignored * 10) + int(scale))
    N, C, H, W = 2, 5, 6, 7
    logits = (scale * rng.standard_normal((N, C, H, W))).astype(dtype)
    target = rng.integers(0, C, (N, H, W))
    target[rng.random((N, H, W)) < ignored] = 255
    target = target.astype(target_dtype)
    loss, dlogits = scratch.softmax_cross_entropy(logits, target)
    assert isinstance(loss, dtype) and dlogits.dtype == dtype
    lt = _t(logits, True)
    loss_t = ref.softmax_cross_entropy(lt, torch.from_numpy(target.astype(np.int64)))
    loss_t.backward()
    assert abs(loss - loss_t.item()) <= TOL[dtype] * max(1.0, abs(loss_t.item()))
    _close(dlogits, lt.grad.numpy(), dtype, GRAD_TOL)
    if dtype == F32:  # float32 in, but as close to the exact (float64) answer as torch's float32 is
        exact = _t(logits.astype(F64), True)
        loss64 = ref.softmax_cross_entropy(exact, torch.from_numpy(target.astype(np.int64)))
        loss64.backward()
        assert abs(loss - loss64.item()) <= 1e-5 * max(1.0, loss64.item())
        assert _rel(dlogits, exact.grad.numpy()) < 1e-5
    if ignored:
        assert (dlogits.transpose(0, 2, 3, 1)[target == 255] == 0).all()


def test_cross_entropy_huge_logits_do_not_overflow():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 800.0]]).T.reshape(1, 3, 1, 2).astype(F32)
    target = np.array([[[0, 1]]])
    loss, dlogits = scratch.softmax_cross_entropy(logits, target)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert abs(loss - 400.0) < 1e-3  # pixel 0: ~0, pixel 1: 800


def test_cross_entropy_torch_default_ignore_index():
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((2, 4, 3, 5))
    target = rng.integers(0, 4, (2, 3, 5))
    target[0, 0] = -100  # torch's own default ignore_index
    loss, dlogits = scratch.softmax_cross_entropy(logits, target, ignore_index=-100)
    lt = _t(logits, True)
    loss_t = ref.softmax_cross_entropy(lt, torch.from_numpy(target), ignore_index=-100)
    loss_t.backward()
    assert abs(loss - loss_t.item()) < 1e-12
    assert _rel(dlogits, lt.grad.numpy()) < 1e-10
    assert not dlogits[0, :, 0].any()


def test_cross_entropy_ignore_index_inside_the_classes():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((1, 4, 3, 5))
    target = rng.integers(0, 4, (1, 3, 5))
    loss, dlogits = scratch.softmax_cross_entropy(logits, target, ignore_index=2)
    lt = _t(logits, True)
    loss_t = ref.softmax_cross_entropy(lt, torch.from_numpy(target), ignore_index=2)
    loss_t.backward()
    assert (target == 2).any() and abs(loss - loss_t.item()) < 1e-12
    assert _rel(dlogits, lt.grad.numpy()) < 1e-10


@DTYPES
def test_cross_entropy_all_ignored_is_nan_like_torch(dtype):
    logits = _randn(np.random.default_rng(0), (2, 3, 4, 5), dtype)
    target = np.full((2, 4, 5), 255)
    loss, dlogits = scratch.softmax_cross_entropy(logits, target)
    lt = _t(logits, True)
    loss_t = ref.softmax_cross_entropy(lt, torch.from_numpy(target))
    loss_t.backward()
    assert np.isnan(loss) and isinstance(loss, dtype) and torch.isnan(loss_t)
    assert np.array_equal(dlogits, lt.grad.numpy()) and not dlogits.any() and dlogits.dtype == dtype


# --------------------------------------------------------------------------- bad input

def _x(*shape, dtype=F32):
    return np.ones(shape, dtype=dtype)


def _bn(**bad):
    a = dict(x=_x(2, 3, 4, 4), gamma=_x(3), beta=_x(3), running_mean=_x(3), running_var=_x(3), training=True) | bad
    return scratch.batch_norm2d(**a)


def _readonly(n):
    a = _x(n)
    a.flags.writeable = False
    return a


_, BN_CACHE = scratch.batch_norm2d(_x(2, 3, 4, 4), _x(3), _x(3), _x(3), _x(3), True)
_, POOL_CACHE = scratch.max_pool2d(_x(1, 2, 5, 5))

BAD = [  # (function, call, message regex)
    (scratch.batch_norm2d, lambda: _bn(x=_x(3, 4, 4)), r"x must be 4-D \(N, C, H, W\), got shape \(3, 4, 4\)"),
    (scratch.batch_norm2d, lambda: _bn(x=_x(2, 3, 4, 4, dtype=np.float16)), "x has dtype float16, expected float32 or float64"),
    (scratch.batch_norm2d, lambda: _bn(gamma=_x(4)), r"gamma has shape \(4,\), expected \(3,\)"),
    (scratch.batch_norm2d, lambda: _bn(beta=_x(3, dtype=F64)), "beta has dtype float64 but x has dtype float32"),
    (scratch.batch_norm2d, lambda: _bn(running_var=[1.0, 1.0, 1.0]), "running_var must be a numpy array, got list"),
    (scratch.batch_norm2d, lambda: _bn(running_mean=_readonly(3)), "running_mean is read-only"),
    (scratch.batch_norm2d, lambda: _bn(training="yes"), "training must be True or False, got 'yes'"),
    (scratch.batch_norm2d, lambda: _bn(momentum=1.5), r"momentum must be a number in \[0, 1\], got 1.5"),
    (scratch.batch_norm2d, lambda: _bn(eps=0), "eps must be a number > 0, got 0"),
    (scratch.batch_norm2d, lambda: _bn(x=_x(1, 3, 1, 1)), r"more than 1 value per channel, got x of shape \(1, 3, 1, 1\)"),
    (scratch.batch_norm2d_backward, lambda: scratch.batch_norm2d_backward(_x(2, 3, 4, 5), BN_CACHE),
     r"dy has shape \(2, 3, 4, 5\), expected \(2, 3, 4, 4\)"),
    (scratch.batch_norm2d_backward, lambda: scratch.batch_norm2d_backward(_x(2, 3, 4, 4), (1, 2, 3, 4)),
     "cache must be the BatchNormCache returned by batch_norm2d, got tuple"),
    (scratch.relu, lambda: scratch.relu(np.ones(3, dtype=np.int64)), "x has dtype int64"),
    (scratch.relu_backward, lambda: scratch.relu_backward(_x(2, 3), _x(3, 2)), r"dy has shape \(2, 3\), expected \(3, 2\)"),
    (scratch.max_pool2d, lambda: scratch.max_pool2d(_x(1, 2, 5, 5), kernel=0), "kernel must be an int >= 1, got 0"),
    (scratch.max_pool2d, lambda: scratch.max_pool2d(_x(1, 2, 5, 5), stride=2.0), "stride must be an int >= 1, got 2.0"),
    (scratch.max_pool2d, lambda: scratch.max_pool2d(_x(1, 2, 5, 5), padding=2), "padding must be at most kernel // 2 = 1"),
    (scratch.max_pool2d, lambda: scratch.max_pool2d(_x(1, 2, 5, 5), ceil_mode=1), "ceil_mode must be True or False, got 1"),
    (scratch.max_pool2d, lambda: scratch.max_pool2d(_x(1, 2, 2, 5), 3, 1, 0), r"kernel 3 is larger than the padded input 2"),
    (scratch.max_pool2d, lambda: scratch.max_pool2d(_x(0, 2, 5, 5)), "x has an empty axis"),
    (scratch.max_pool2d_infer, lambda: scratch.max_pool2d_infer(_x(1, 2, 5, 5), padding=2), "padding must be at most kernel // 2 = 1"),
    (scratch.resize_bilinear_infer, lambda: scratch.resize_bilinear_infer(_x(1, 2, 5, 5), (0, 3), False),
     r"size must be a tuple of 2 ints >= 1, got \(0, 3\)"),
    (scratch.resize_bilinear_infer, lambda: scratch.resize_bilinear_infer(_x(2, 5, 5), (3, 3), False), "x must be 4-D"),
    (scratch.max_pool2d_infer, lambda: scratch.max_pool2d_infer(_x(2, 5, 5)), r"x must be 4-D \(N, C, H, W\)"),
    (scratch.max_pool2d_backward, lambda: scratch.max_pool2d_backward(_x(1, 2, 2, 2), POOL_CACHE),
     r"dy has shape \(1, 2, 2, 2\), expected \(1, 2, 3, 3\)"),
    (scratch.global_avg_pool, lambda: scratch.global_avg_pool(_x(2, 3, 4)), "x must be 4-D"),
    (scratch.global_avg_pool_backward, lambda: scratch.global_avg_pool_backward(_x(2, 3, 1, 1), (2, 3, 4)),
     r"input_shape must be a tuple of 4 ints >= 1, got \(2, 3, 4\)"),
    (scratch.global_avg_pool_backward, lambda: scratch.global_avg_pool_backward(_x(2, 3), (2, 3, 4, 4)),
     r"dy has shape \(2, 3\), expected \(2, 3, 1, 1\)"),
    (scratch.resize_bilinear, lambda: scratch.resize_bilinear(_x(1, 2, 4, 4), (8, 0), True), r"size must be a tuple of 2 ints >= 1, got \(8, 0\)"),
    (scratch.resize_bilinear, lambda: scratch.resize_bilinear(_x(1, 2, 4, 4), 8, True), "size must be a tuple of 2 ints >= 1, got 8"),
    (scratch.resize_bilinear, lambda: scratch.resize_bilinear(_x(1, 2, 4, 4), (8, 8.0), True), r"size must be .* got \(8, 8.0\)"),
    (scratch.resize_bilinear, lambda: scratch.resize_bilinear(_x(1, 2, 4, 4), (8, 8), None), "align_corners must be True or False, got None"),
    (scratch.resize_bilinear_backward, lambda: scratch.resize_bilinear_backward(_x(1, 3, 8, 8), (1, 2, 4, 4), True),
     r"dy has shape \(1, 3, 8, 8\), expected \(N, C\) = \(1, 2\)"),
    (scratch.bilinear_matrix, lambda: scratch.bilinear_matrix(0, 3, True), "in_size must be an int >= 1, got 0"),
    (scratch.concat, lambda: scratch.concat([_x(1, 2, 3, 3), _x(1, 2, 3, 4)]),
     r"xs\[1\] has shape \(1, 2, 3, 4\), expected \(1, \*, 3, 3\)"),
    (scratch.concat, lambda: scratch.concat([_x(1, 2, 3, 3), _x(1, 2, 3, 3, dtype=F64)]), r"xs\[1\] has dtype float64 but xs\[0\] has dtype float32"),
    (scratch.concat, lambda: scratch.concat([_x(1, 2, 3, 3)], axis=4), r"axis must be an int in \[-4, 4\) for 4-D arrays, got 4"),
    (scratch.concat, lambda: scratch.concat([]), "xs must be a non-empty list of arrays, got list of length 0"),
    (scratch.concat_backward, lambda: scratch.concat_backward(_x(1, 5, 3, 3), [2, 2]), r"sizes \[2, 2\] add up to 4, but dy has shape \(1, 5, 3, 3\)"),
    (scratch.concat_backward, lambda: scratch.concat_backward(_x(1, 5, 3, 3), [5, 0]), r"sizes must be a non-empty list of ints >= 1, got \[5, 0\]"),
    (scratch.dropout, lambda: scratch.dropout(_x(2, 3), 1.0, True, np.random.default_rng(0)), r"p must be a number in \[0, 1\), got 1.0"),
    (scratch.dropout, lambda: scratch.dropout(_x(2, 3), -0.1, True, np.random.default_rng(0)), r"p must be .* got -0.1"),
    (scratch.dropout, lambda: scratch.dropout(_x(2, 3), 0.5, True, 0), "rng must be a numpy.random.Generator .* got int"),
    (scratch.dropout_backward, lambda: scratch.dropout_backward(_x(2, 3), _x(3, 2)), r"mask has shape \(3, 2\), expected \(2, 3\)"),
    (scratch.dropout_backward, lambda: scratch.dropout_backward(_x(2, 3), _x(2, 3, dtype=F64)), "mask has dtype float64 but dy has dtype float32"),
    (scratch.separable_conv2d, lambda: scratch.separable_conv2d(_x(1, 3, 6, 6), _x(3, 3, 3, 3), _x(4, 3, 1, 1)),
     r"depthwise_weight has shape \(3, 3, 3, 3\), expected \(3, 1, kh, kw\)"),
    (scratch.separable_conv2d, lambda: scratch.separable_conv2d(_x(1, 3, 6, 6), _x(3, 1, 3, 3), _x(4, 2, 1, 1)),
     r"pointwise_weight has shape \(4, 2, 1, 1\), expected \(Cout, 3, 1, 1\)"),
    (scratch.separable_conv2d, lambda: scratch.separable_conv2d(_x(1, 3, 6, 6), _x(3, 1, 3, 3), _x(4, 3, 1, 1, dtype=F64)),
     "pointwise_weight has dtype float64 but x has dtype float32"),
    (scratch.separable_conv2d, lambda: scratch.separable_conv2d(_x(1, 3, 6, 6), _x(3, 1, 3, 3), _x(4, 3, 1, 1), rate=0),
     "rate must be an int >= 1, got 0"),
    (scratch.separable_conv2d, lambda: scratch.separable_conv2d(_x(1, 3, 6, 6), _x(3, 1, 3, 3), _x(4, 3, 1, 1), rate=3, padding="valid"),
     "kernel footprint"),
    (scratch.separable_conv2d_backward,
     lambda: scratch.separable_conv2d_backward(_x(1, 4, 3, 3), _x(1, 3, 6, 6), _x(3, 1, 3, 3), _x(4, 3, 1, 1)),
     r"dout has shape \(1, 4, 3, 3\), expected \(1, 4, 6, 6\)"),
    (scratch.softmax_cross_entropy, lambda: scratch.softmax_cross_entropy(_x(1, 3, 2, 2), np.array([[[0, 1], [5, 255]]])),
     r"target has label 5 at \(n, y, x\) = \(0, 1, 0\), expected a label in \[0, 3\) or ignore_index=255"),
    (scratch.softmax_cross_entropy, lambda: scratch.softmax_cross_entropy(_x(1, 3, 2, 2), np.array([[[0, 1], [-1, 2]]])),
     r"target has label -1 at \(n, y, x\) = \(0, 1, 0\)"),
    (scratch.softmax_cross_entropy, lambda: scratch.softmax_cross_entropy(_x(1, 3, 2, 2), np.zeros((1, 2, 2))),
     "target has dtype float64, expected an integer dtype"),
    (scratch.softmax_cross_entropy, lambda: scratch.softmax_cross_entropy(_x(1, 3, 2, 2), np.zeros((1, 2, 3), dtype=int)),
     r"target has shape \(1, 2, 3\), expected \(1, 2, 2\)"),
    (scratch.softmax_cross_entropy, lambda: scratch.softmax_cross_entropy(_x(1, 3, 2, 2), np.zeros((2, 2), dtype=int)),
     r"target has shape \(2, 2\), expected \(1, 2, 2\)"),
    (scratch.softmax_cross_entropy, lambda: scratch.softmax_cross_entropy(_x(3, 2, 2), np.zeros((3, 2), dtype=int)),
     "logits must be 4-D"),
    (scratch.softmax_cross_entropy, lambda: scratch.softmax_cross_entropy(_x(1, 3, 2, 2), np.zeros((1, 2, 2), dtype=int), 2.5),
     "ignore_index must be an int, got 2.5"),
]


@pytest.mark.parametrize("fn, call, message", [pytest.param(*b, id=f"{b[0].__name__}-{i}") for i, b in enumerate(BAD)])
def test_bad_input(fn, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert str(info.value).startswith(fn.__name__ + ":")  # the message names the function called
