"""Atrous convolution: scratch (naive loops and fast kernels) against the PyTorch reference."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minideeplab.reference import atrous as ref
from minideeplab.scratch import atrous as scratch
from minideeplab.scratch import conv_output_size

IMPLS = {
    "naive": (scratch.atrous_conv2d_naive, scratch.atrous_conv2d_backward_naive),
    "fast": (scratch.atrous_conv2d, scratch.atrous_conv2d_backward),
}
TOL = {np.float32: 1e-5, np.float64: 1e-10}

# (N, C, H, W, Cout, (kh, kw), rate, stride, padding, groups, bias)
CASES = [
    (1, 3, 7, 11, 4, (3, 3), 1, 1, "same", 1, True),
    (2, 4, 13, 9, 6, (3, 3), 2, 2, "same", 2, False),
    (2, 6, 9, 9, 6, (3, 3), 4, 1, "same", 6, True),      # depthwise
    (1, 4, 10, 12, 8, (3, 3), 24, 1, "same", 1, True),   # every off-centre tap reads only padding
    (3, 5, 9, 10, 4, (3, 3), 6, 1, "same", 1, False),    # off-centre taps see 3 of 9 rows
    (2, 3, 12, 12, 5, (3, 3), 5, 1, "valid", 1, True),
    (1, 6, 11, 8, 6, (3, 3), 3, 2, 2, 3, True),          # int padding, stride 2, 3 groups
    (2, 4, 8, 8, 8, (3, 3), 1, 1, 0, 4, True),           # depthwise with 2 outputs per channel
    (1, 4, 16, 16, 4, (3, 3), 12, 2, "same", 1, True),   # stride 2 at a large rate
    (2, 4, 13, 9, 4, (3, 3), 2, 2, 1, 4, False),         # depthwise, stride 2
    (1, 3, 9, 11, 4, (3, 5), 2, 1, "same", 1, True),     # non-square kernel
    (2, 2, 6, 7, 3, (3, 3), 1, 1, 4, 1, True),           # padding wider than the kernel's reach
    (1, 4, 15, 15, 6, (5, 5), 3, 1, "same", 2, True),
    (1, 3, 12, 10, 2, (1, 1), 7, 2, "valid", 1, False),  # 1x1: rate changes nothing
    (1, 2, 1, 1, 3, (2, 2), 10, 1, 5, 1, True),          # no tap ever reads real input: bias only
    (1, 4, 9, 1, 2, (1, 2), 7, 2, 4, 2, False),          # the same, strided and grouped
    (2, 4, 9, 8, 6, (3, 3), 2, 1, "same", 2, True),      # stride-1 GEMM path with N > 1 and groups
    # depthwise: each path of the depthwise kernels (3x3 and 5x5 in one pass, others a kernel row at a time: 3 and
    # 5 taps written out, other widths tap by tap), and the zero rows and columns around the plane
    (2, 5, 11, 13, 5, (5, 5), 2, 1, "same", 5, True),    # 5x5 at rate 2 (MobileNetV3's last stage)
    (1, 4, 17, 15, 4, (5, 5), 1, 2, "same", 4, False),   # 5x5, stride 2
    (1, 3, 12, 11, 6, (5, 5), 2, 1, "valid", 3, True),   # 5x5, no padding, 2 outputs per channel
    (1, 2, 6, 7, 2, (5, 5), 1, 1, 6, 2, False),          # 5x5, padding wider than its reach
    (1, 2, 9, 8, 2, (5, 3), 2, 1, "same", 2, True),      # 5 kernel rows of 3 taps
    (1, 3, 10, 9, 6, (3, 5), 3, 3, 2, 3, True),          # 2 outputs per channel, non-square, stride 3
    (1, 4, 8, 8, 4, (3, 3), 12, 1, "same", 4, True),     # the off-centre taps read only padding
    (2, 3, 7, 20, 3, (1, 7), 1, 1, "same", 3, False),    # a 1x7 kernel
    (1, 2, 6, 6, 2, (3, 3), 1, 1, 5, 2, True),           # padding wider than the kernel's reach
    (1, 8, 33, 35, 8, (3, 3), 2, 2, "same", 8, True),    # rows longer than a vector loop's unrolled step
    (2, 5, 17, 19, 7, (3, 3), 1, 1, "same", 1, True),    # im2col (few reads in the padding), N > 1
    (1, 3, 41, 39, 8, (7, 7), 1, 2, 3, 1, False),        # im2col: the ResNet stem, 7x7 stride 2
    (2, 4, 17, 16, 6, (3, 3), 1, 2, "same", 1, False),   # im2col, stride 2
    (1, 6, 24, 20, 5, (3, 3), 2, 1, "same", 1, True),    # im2col at rate 2
]


def _rel(a, b):
    """max |a - b| relative to max |b| (absolute when b is all zeros, e.g. a gradient nothing reaches)."""
    scale = np.max(np.abs(b))
    return np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0)


def _inputs(case, dtype, seed):
    N, C, H, W, Cout, (kh, kw), rate, stride, padding, groups, has_bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    weight = rng.standard_normal((Cout, C // groups, kh, kw)).astype(dtype)
    bias = rng.standard_normal(Cout).astype(dtype) if has_bias else None
    return x, weight, bias, dict(rate=rate, stride=stride, padding=padding, groups=groups)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_reference(impl, dtype, case):
    forward, backward = IMPLS[impl]
    x, weight, bias, kw = _inputs(CASES[case], dtype, seed=case)
    expected = ref.atrous_conv2d(x, weight, bias, **kw)
    out = forward(x, weight, bias, **kw)
    assert out.shape == expected.shape and out.dtype == dtype
    assert _rel(out, expected) < TOL[dtype]

    dout = np.random.default_rng(100 + case).standard_normal(out.shape).astype(dtype)
    grads = backward(dout, x, weight, **kw)
    expected_grads = ref.atrous_conv2d_backward(dout, x, weight, **kw)
    for name, g, e in zip(("dx", "dweight", "dbias"), grads, expected_grads):
        assert g.shape == e.shape and g.dtype == dtype, name
        assert _rel(g, e) < TOL[dtype], name


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fused_matches_reference(dtype, case):
    """conv2d_fused (eval: conv, batch norm as scale/shift, residual, ReLU in one pass) against the
    reference conv followed by the same affine map, residual and ReLU."""
    x, weight, _, kw = _inputs(CASES[case], dtype, seed=case)
    rng = np.random.default_rng(200 + case)
    conv = ref.atrous_conv2d(x, weight, None, **kw)
    Cout = weight.shape[0]
    scale, shift = rng.uniform(0.5, 1.5, Cout).astype(dtype), rng.standard_normal(Cout).astype(dtype)
    residual = rng.standard_normal(conv.shape).astype(dtype)
    affine = conv * scale[:, None, None] + shift[:, None, None]
    for res, relu in ((None, False), (residual, True), (None, True)):
        expected = affine + (0 if res is None else res)
        expected = np.maximum(expected, 0) if relu else expected
        out = scratch.conv2d_fused(x, weight, scale, shift, residual=res, relu=relu, **kw)
        assert out.shape == expected.shape and out.dtype == dtype
        assert _rel(out, expected) < TOL[dtype]
        assert relu is False or (out >= 0).all()


def test_depthwise_same_result_on_any_number_of_threads():
    """The depthwise kernels split planes (forward) and channels (backward) over threads, each owning what
    it writes: 1 and 3 threads give the same bits."""
    from minideeplab.scratch import atrous_fast as fast

    x, weight, bias, kw = _inputs((3, 5, 12, 11, 10, (3, 3), 2, 2, "same", 5, True), np.float32, seed=7)
    g = fast.check_conv2d("t", x, weight, bias, **kw)
    args = (kw["rate"], kw["stride"], g.ph, g.pw)
    one = fast.depthwise_conv2d(x, weight, bias, *args, g.Ho, g.Wo, threads=1)
    three = fast.depthwise_conv2d(x, weight, bias, *args, g.Ho, g.Wo, threads=3)
    assert np.array_equal(one, three) and _rel(one, ref.atrous_conv2d(x, weight, bias, **kw)) < 1e-5
    dout = np.random.default_rng(8).standard_normal(one.shape).astype(np.float32)
    for a, b in zip(fast.depthwise_conv2d_backward(dout, x, weight, *args, threads=1),
                    fast.depthwise_conv2d_backward(dout, x, weight, *args, threads=3)):
        assert np.array_equal(a, b)


def test_im2col_and_tap_paths_are_both_tested():
    """Which path a conv takes: im2col when few reads fall in the padding, per-tap GEMMs when most do."""
    from minideeplab.scratch import atrous_fast as fast

    chosen = []
    for case in CASES:
        x, weight, _, kw = _inputs(case, np.float32, seed=0)
        g = fast.check_conv2d("t", x, weight, None, **kw)
        chosen.append(fast.use_im2col(x, weight, kw["rate"], kw["stride"], g.ph, g.pw, kw["groups"], g.Ho, g.Wo))
    assert chosen[-4:] == [True] * 4 and not chosen[3] and sum(chosen) < len(CASES) - 4


def test_im2col_in_bands(monkeypatch):
    """A small column buffer: the output rows are done in several bands, with the same result."""
    from minideeplab.scratch import atrous_fast as fast

    x, weight, bias, kw = _inputs(CASES[-3], np.float64, seed=1)
    whole = scratch.atrous_conv2d(x, weight, bias, **kw)
    monkeypatch.setattr(fast, "IM2COL_BYTES", 3 * 147 * 20 * 8)  # 3 of the 21 output rows per band
    banded = scratch.atrous_conv2d(x, weight, bias, **kw)
    assert _rel(banded, whole) < 1e-14 and _rel(banded, ref.atrous_conv2d(x, weight, bias, **kw)) < 1e-10


def test_output_size_formula():
    assert conv_output_size(65, 3, rate=12) == 65                      # "same" keeps the size
    assert conv_output_size(33, 3, rate=12, padding="valid") == 9       # 33 - 24
    assert conv_output_size(65, 3, rate=2, stride=2) == 33
    assert conv_output_size(10, 3, rate=1, stride=2, padding=3) == 7    # floor((10 + 6 - 3) / 2) + 1
    assert conv_output_size(12, 1, rate=7, stride=2, padding="valid") == 6
    for case in CASES:
        N, C, H, W, Cout, (kh, kw), rate, stride, padding, groups, _ = case
        x, weight, bias, kw_ = _inputs(case, np.float64, 0)
        shape = ref.atrous_conv2d(x, weight, bias, **kw_).shape
        assert shape[2:] == (conv_output_size(H, kh, rate, stride, padding),
                             conv_output_size(W, kw, rate, stride, padding))


@pytest.mark.parametrize("bad, message", [
    (dict(size=0), "size must be an int >= 1"),
    (dict(rate=0), "rate must be an int >= 1"),
    (dict(stride=1.5), "stride must be an int >= 1"),
    (dict(padding="full"), "padding must be 'same', 'valid' or an int >= 0"),
    (dict(kernel=4), "padding='same' needs an odd kernel"),
    (dict(size=5, rate=3, padding="valid"), "kernel footprint"),
])
def test_output_size_errors(bad, message):
    args = dict(size=9, kernel=3, rate=1, stride=1, padding="same") | bad
    with pytest.raises(ValueError, match=message):
        conv_output_size(**args)


@pytest.mark.parametrize("case", [0, 1])
def test_non_contiguous_input(case):
    x, weight, bias, kw = _inputs(CASES[case], np.float64, case)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, other strides
    assert not xt.flags.c_contiguous
    out = ref.atrous_conv2d(x, weight, bias, **kw)
    np.testing.assert_allclose(scratch.atrous_conv2d(xt, weight, bias, **kw), out, rtol=1e-12, atol=1e-12)
    dout = np.random.default_rng(case).standard_normal(out.shape)[..., ::-1]  # negative strides
    for got, expected in zip(scratch.atrous_conv2d_backward(dout, xt, weight, **kw),
                             ref.atrous_conv2d_backward(np.ascontiguousarray(dout), x, weight, **kw)):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- bad input

def _call(fn, x, weight, bias=None, dout=None, **kw):
    """Call any of the six functions; the backward ones get a dout (of the right shape unless given)."""
    if fn.__name__.startswith("atrous_conv2d_backward"):
        if dout is None:
            dout = np.zeros((1, weight.shape[0], 1, 1), dtype=getattr(x, "dtype", F32))  # shape is checked last
        return fn(dout, x, weight, **kw)
    return fn(x, weight, bias, **kw)


FUNCTIONS = [scratch.atrous_conv2d_naive, scratch.atrous_conv2d, scratch.atrous_conv2d_backward_naive,
             scratch.atrous_conv2d_backward, ref.atrous_conv2d, ref.atrous_conv2d_backward]
F32 = np.float32


def _arr(*shape, dtype=F32):
    return np.ones(shape, dtype=dtype)


BAD = [
    ("x 3-D", dict(x=_arr(3, 5, 5)), "x must be 4-D"),
    ("weight 3-D", dict(weight=_arr(4, 3, 3)), "weight must be 4-D"),
    ("x empty", dict(x=_arr(0, 3, 5, 5)), "x has an empty axis"),
    ("x list", dict(x=[[[[1.0]]]]), "x must be a numpy array"),
    ("C % groups", dict(x=_arr(1, 6, 5, 5), weight=_arr(4, 1, 3, 3), groups=4), "x has 6 channels, not divisible by groups=4"),
    ("Cout % groups", dict(x=_arr(1, 6, 5, 5), weight=_arr(5, 3, 3, 3), groups=2), "weight has 5 output channels, not divisible by groups=2"),
    ("weight channels", dict(x=_arr(1, 6, 5, 5), weight=_arr(4, 4, 3, 3), groups=2),
     r"weight has 4 input channels per group, expected 3 \(x has 6 channels, groups=2\)"),
    ("rate 0", dict(rate=0), "rate must be an int >= 1, got 0"),
    ("rate float", dict(rate=2.0), "rate must be an int >= 1, got 2.0"),
    ("rate bool", dict(rate=True), "rate must be an int >= 1, got True"),
    ("stride 0", dict(stride=0), "stride must be an int >= 1"),
    ("stride float", dict(stride=1.5), "stride must be an int >= 1"),
    ("groups 0", dict(groups=0), "groups must be an int >= 1"),
    ("padding word", dict(padding="full"), "padding must be 'same', 'valid' or an int >= 0, got 'full'"),
    ("padding negative", dict(padding=-1), "padding must be .* got -1"),
    ("padding float", dict(padding=1.0), "padding must be .* got 1.0"),
    ("same even kernel", dict(weight=_arr(4, 3, 2, 2)), "padding='same' needs an odd kernel size, got kernel size 2"),
    ("footprint", dict(rate=3, padding="valid"), r"kernel footprint rate\*\(k-1\)\+1 = 7 .* padded input height of x 5 \+ 2\*0"),
    ("weight dtype", dict(weight=_arr(4, 3, 3, 3, dtype=np.float64)), "weight has dtype float64 but x has dtype float32"),
    ("x dtype", dict(x=_arr(1, 3, 5, 5, dtype=np.float16), weight=_arr(4, 3, 3, 3, dtype=np.float16)),
     "x has dtype float16, expected float32 or float64"),
    ("x int", dict(x=np.ones((1, 3, 5, 5), dtype=np.int64)), "x has dtype int64"),
]
BAD_FORWARD = [
    ("bias dtype", dict(bias=_arr(4, dtype=np.float64)), "bias has dtype float64"),
    ("bias shape", dict(bias=_arr(5)), r"bias has shape \(5,\), expected \(4,\)"),
    ("bias 2-D", dict(bias=_arr(4, 1)), r"bias has shape \(4, 1\)"),
]
BAD_BACKWARD = [
    ("dout dtype", dict(dout=_arr(1, 4, 5, 5, dtype=np.float64)), "dout has dtype float64"),
    ("dout shape", dict(dout=_arr(1, 4, 3, 3)), r"dout has shape \(1, 4, 3, 3\), expected the forward output shape \(1, 4, 5, 5\)"),
    ("dout 3-D", dict(dout=_arr(4, 5, 5)), r"dout has shape \(4, 5, 5\)"),
]


def _bad_params():
    for fn in FUNCTIONS:
        backward = fn.__name__.startswith("atrous_conv2d_backward")
        for label, bad, message in BAD + (BAD_BACKWARD if backward else BAD_FORWARD):
            yield pytest.param(fn, bad, message, id=f"{fn.__module__.split('.')[1]}.{fn.__name__}-{label}")


@pytest.mark.parametrize("fn, bad, message", list(_bad_params()))
def test_bad_input(fn, bad, message):
    args = dict(x=_arr(1, 3, 5, 5), weight=_arr(4, 3, 3, 3)) | bad
    with pytest.raises(ValueError, match=message) as info:
        _call(fn, **args)
    assert str(info.value).startswith(fn.__name__ + ":")  # the message names the function called


_ONES = _arr(4)


@pytest.mark.parametrize("bad, message", [
    (dict(x=_arr(3, 5, 5)), "x must be 4-D"),
    (dict(rate=0), "rate must be an int >= 1, got 0"),
    (dict(scale=_arr(5)), r"scale is \(5,\) float32, expected \(4,\) float32 \(one per output channel\)"),
    (dict(shift=_arr(4, dtype=np.float64)), r"shift is \(4,\) float64, expected \(4,\) float32"),
    (dict(shift=[0.0] * 4), r"shift is list, expected \(4,\) float32"),
    (dict(residual=_arr(1, 4, 3, 3)), r"residual is \(1, 4, 3, 3\) float32, expected \(1, 4, 5, 5\) float32"),
    (dict(relu="no"), "relu must be True or False, got 'no'"),
])
def test_fused_bad_input(bad, message):
    args = dict(x=_arr(1, 3, 5, 5), weight=_arr(4, 3, 3, 3), scale=_ONES, shift=_ONES) | bad
    with pytest.raises(ValueError, match=message) as info:
        scratch.conv2d_fused(**args)
    assert str(info.value).startswith("conv2d_fused:")


def test_numba_disabled_runs_as_python():
    """Students step through the kernels with NUMBA_DISABLE_JIT=1: the fast path must still be right."""
    script = textwrap.dedent("""
        import numpy as np
        import numba
        assert numba.config.DISABLE_JIT
        from minideeplab.reference import atrous as ref
        from minideeplab.scratch import atrous as scratch
        rng = np.random.default_rng(0)
        for (C, Cout, groups, rate, stride, padding, k) in [(4, 6, 1, 2, 1, "same", 3), (4, 4, 2, 3, 2, 1, 3),
                                                           (4, 4, 4, 2, 1, "same", 3), (4, 8, 4, 1, 2, "same", 5)]:
            x = rng.standard_normal((2, C, 9, 11))
            w = rng.standard_normal((Cout, C // groups, k, k))
            b = rng.standard_normal(Cout)
            kw = dict(rate=rate, stride=stride, padding=padding, groups=groups)
            out = scratch.atrous_conv2d(x, w, b, **kw)
            assert np.abs(out - ref.atrous_conv2d(x, w, b, **kw)).max() < 1e-10
            dout = rng.standard_normal(out.shape)
            for g, e in zip(scratch.atrous_conv2d_backward(dout, x, w, **kw), ref.atrous_conv2d_backward(dout, x, w, **kw)):
                assert np.abs(g - e).max() < 1e-10 * np.abs(e).max()
        # the eval conv (im2col for these two, then the affine pass) and the eval pieces above it
        from minideeplab.scratch import atrous_fast as fast
        from minideeplab.scratch.layers import max_pool2d, max_pool2d_infer
        for (C, k, rate, stride, padding) in [(4, 3, 1, 1, "same"), (3, 7, 1, 2, 3)]:
            x = rng.standard_normal((2, C, 41, 39))
            w = rng.standard_normal((5, C, k, k))
            s, b = rng.uniform(0.5, 1.5, 5), rng.standard_normal(5)
            conv = ref.atrous_conv2d(x, w, None, rate=rate, stride=stride, padding=padding)
            r = rng.standard_normal(conv.shape)
            g = fast.check_conv2d("t", x, w, None, rate, stride, padding)
            assert fast.use_im2col(x, w, rate, stride, g.ph, g.pw, 1, g.Ho, g.Wo)
            out = scratch.conv2d_fused(x, w, s, b, rate, stride, padding, residual=r, relu=True)
            assert np.abs(out - np.maximum(conv * s[:, None, None] + b[:, None, None] + r, 0)).max() < 1e-10
        assert np.array_equal(max_pool2d_infer(x, 3, 2, 1), max_pool2d(x, 3, 2, 1)[0])
        import torch
        from minideeplab.reference.layers import resize_bilinear
        from minideeplab.scratch.layers import resize_bilinear_infer
        x[0, 1, 5, 7] = np.nan  # only its neighbours turn NaN, as in torch
        for align_corners in (False, True):
            got = resize_bilinear_infer(x, (50, 20), align_corners)
            expected = resize_bilinear(torch.from_numpy(x), (50, 20), align_corners).numpy()
            assert np.array_equal(np.isnan(got), np.isnan(expected)) and 0 < np.isnan(got).sum() < 50
            assert np.nanmax(np.abs(got - expected)) < 1e-12
        print("ok")
    """)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
