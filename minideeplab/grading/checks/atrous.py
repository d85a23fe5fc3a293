"""Checks for notebook 02, atrous convolution: exercises 2.1-2.3."""

from __future__ import annotations

import numpy as np

from minideeplab.grading.checks.common import as_number, first_bad
from minideeplab.grading.core import ExerciseWrong, compare_arrays, crash_hint, exercise_check, passed
from minideeplab.specs.conv import resolve_padding  # the one padding rule, shared with the reference

__all__ = ["exercise_2_1", "exercise_2_2", "exercise_2_3"]


def _torch_output_size(size, kernel, rate, stride, padding):
    import torch
    import torch.nn.functional as F

    p = resolve_padding(padding, kernel, rate)
    x = torch.zeros(1, 1, size, 1)
    return F.conv2d(x, torch.zeros(1, 1, kernel, 1), stride=stride, padding=(p, 0), dilation=(rate, 1)).shape[2]


@exercise_check("2.1")
def exercise_2_1(conv_output_size):
    """conv_output_size(size, kernel, rate, stride, padding) against the output shape of torch's conv2d."""
    cases = []
    for size in (7, 16, 33, 65):
        for kernel in (1, 3, 5):
            for rate in (1, 2, 6):
                for stride in (1, 2, 3):
                    for padding in ("same", "valid", 2):
                        p = resolve_padding(padding, kernel, rate)
                        if rate * (kernel - 1) + 1 <= size + 2 * p:
                            cases.append((size, kernel, rate, stride, padding))
    got = np.array([as_number(conv_output_size(*c), "2.1", f"conv_output_size{c}") for c in cases], dtype=float)
    expected = np.array([_torch_output_size(*c) for c in cases], dtype=float)

    def variant(size, kernel, rate, stride, padding, mistake):
        p = resolve_padding(padding, kernel, rate)
        if mistake == "pad" and padding == "same":
            p = (kernel - 1) // 2
        k_eff = kernel if mistake == "rate" else rate * (kernel - 1) + 1
        n = size + 2 * p - k_eff
        return {"plus1": n // stride, "ceil": -(-n // stride) + 1, "stride": n + 1}.get(mistake, n // stride + 1)

    hints = {
        "pad": "'same' padding must grow with the rate: p = rate*(kernel-1)//2, not (kernel-1)//2.",
        "rate": "the kernel spans rate*(kernel-1) + 1 input pixels: use that effective size, not kernel.",
        "plus1": "off by one: the first output pixel sits at position 0, so add 1 after the division.",
        "ceil": "round down: an output pixel exists only where the whole dilated kernel fits.",
        "stride": "divide by the stride: output pixels are `stride` input pixels apart.",
    }
    known = {text: np.array([variant(*c, key) for c in cases], dtype=float) for key, text in hints.items()}
    what = f"conv_output_size on {len(cases)} cases (sizes 7-65, kernels 1/3/5, rates 1/2/6, strides 1-3)"
    try:
        worst = compare_arrays("2.1", what, got, expected, rtol=0, atol=1e-9, known_mistakes=known,
                               check_dtype=False)
    except ExerciseWrong as e:
        i = first_bad(got, expected)
        s, k, r, st, p = cases[i]
        raise ExerciseWrong(f"{e}\n  first wrong case: conv_output_size(size={s}, kernel={k}, rate={r}, "
                            f"stride={st}, padding={p!r}) returned {got[i]:g}, torch's conv2d gives "
                            f"{expected[i]:g}") from None
    passed("2.1", f"{len(cases)} output sizes equal the shape torch.nn.functional.conv2d returns",
                  worst, "exact")


def _conv_cases():
    """Seeded (x, weight, bias, kwargs) cases for the conv checks, small enough for plain loops."""
    rng = np.random.default_rng(2024)

    def arr(shape, dtype):
        return rng.standard_normal(shape).astype(dtype)

    return [
        (arr((2, 3, 9, 11), np.float64), arr((4, 3, 3, 3), np.float64), arr((4,), np.float64),
         dict(rate=2, stride=1, padding="same")),
        (arr((1, 4, 12, 10), np.float32), arr((5, 4, 3, 3), np.float32), None,
         dict(rate=3, stride=2, padding="same")),
        (arr((1, 2, 13, 9), np.float64), arr((3, 2, 3, 2), np.float64), arr((3,), np.float64),
         dict(rate=2, stride=1, padding="valid")),
        (arr((1, 2, 16, 15), np.float64), arr((2, 2, 5, 5), np.float64), None,
         dict(rate=2, stride=3, padding=1)),
        (arr((2, 4, 8, 8), np.float32), arr((6, 2, 3, 3), np.float32), arr((6,), np.float32),
         dict(rate=2, stride=1, padding="same", groups=2)),
        (arr((1, 3, 10, 12), np.float64), arr((2, 3, 3, 5), np.float64), arr((2,), np.float64),
         dict(rate=2, stride=1, padding="same")),   # non-square: row and column padding differ
    ]


_GROUPS_HINT = ("this case has groups={groups}: each group of C/groups = {cg} input channels feeds its own "
                "Cout/groups = {og} output channels, so output channel o reads only the input channels of its group "
                "g = o // (Cout/groups), xpad[:, g*{cg}:(g+1)*{cg}], with weight[o] of shape ({cg}, kh, kw).")


def _call_student(fn, exercise, *args, **kw):
    """fn(*args, **kw); a crash on a grouped case gets the groups hint."""
    try:
        return fn(*args, **kw)
    except ExerciseWrong as wrong:
        groups = kw.get("groups", 1)
        if wrong.student_error is None or groups == 1:
            raise
        w = args[2] if exercise == "2.3" else args[1]
        hint = _GROUPS_HINT.format(groups=groups, cg=w.shape[1], og=w.shape[0] // groups)
        raise crash_hint(wrong, hint) from wrong.student_error


def _group_by_modulo(x, w, bias, kw):
    """The conv with output channel o in group o % groups instead of o // (Cout/groups), by torch: each output
    channel's weight placed at its (wrong) group's input channels of a full (ungrouped) weight."""
    from minideeplab.reference.atrous import atrous_conv2d as ref

    groups, (Cout, Cg) = kw.get("groups", 1), w.shape[:2]
    full = np.zeros((Cout, Cg * groups) + w.shape[2:], dtype=w.dtype)
    for o in range(Cout):
        g = o % groups
        full[o, g * Cg:(g + 1) * Cg] = w[o]
    return ref(x, full, bias, **{**kw, "groups": 1})


def _describe(x, w, bias, kw) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    b = ", bias" if bias is not None else ""
    return f"x {x.shape} {x.dtype}, weight {w.shape}{b}, {args}"


def _tol(dtype, expected):
    scale = float(np.max(np.abs(expected))) if np.size(expected) else 1.0
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    return rtol, rtol * max(scale, 1e-12)


@exercise_check("2.2")
def exercise_2_2(atrous_conv2d_naive):
    """atrous_conv2d_naive(x, weight, bias, rate, stride, padding, groups) against torch F.conv2d."""
    from minideeplab.reference.atrous import atrous_conv2d as ref

    worst = 0.0
    for x, w, bias, kw in _conv_cases():
        got = _call_student(atrous_conv2d_naive, "2.2", x.copy(), w.copy(), None if bias is None else bias.copy(),
                            **kw)
        expected = ref(x, w, bias, **kw)
        rate, stride, padding, groups = kw["rate"], kw["stride"], kw["padding"], kw.get("groups", 1)
        p = resolve_padding(padding, w.shape[2], rate)
        known = {
            "the kernel is flipped: a conv layer computes a cross-correlation, weight[i, j] multiplies "
            "xpad[y*stride + i*rate, x*stride + j*rate] (no flip).":
                ref(x, np.ascontiguousarray(w[:, :, ::-1, ::-1]), bias, **kw),
            "the rate is missing from the taps: neighbouring taps are `rate` pixels apart "
            "(xpad[..., y*stride + i*rate, ...]).":
                ref(x, w, bias, rate=1, stride=stride, padding=p, groups=groups),
            "one output row and column short: the output size is (H + 2p - rate*(k-1) - 1)//stride + 1.":
                expected[..., :-1, :-1],
        }
        if padding == "same":
            known["'same' padding must grow with the rate: p = rate*(k-1)//2, not (k-1)//2."] = \
                ref(x, w, bias, rate=rate, stride=stride, padding=(w.shape[2] - 1) // 2, groups=groups)
        if stride > 1:
            known["the stride is missing: output pixel (y, x) reads the window at (y*stride, x*stride)."] = \
                ref(x, w, bias, rate=rate, stride=1, padding=padding, groups=groups)
        if groups > 1:
            known[f"output channel o used the input channels of group o % groups: the groups are consecutive "
                  f"blocks, g = o // (Cout/groups) (here Cout/groups = {w.shape[0] // groups})."] = \
                _group_by_modulo(x, w, bias, kw)
        if bias is not None:
            known["the bias is missing: add bias[o] to every pixel of output channel o."] = \
                expected - bias[None, :, None, None]
        rtol, atol = _tol(x.dtype, expected)
        worst = max(worst, compare_arrays("2.2", f"atrous_conv2d_naive({_describe(x, w, bias, kw)})", got,
                                          expected, rtol=rtol, atol=atol, known_mistakes=known))
    passed("2.2", f"{len(_conv_cases())} convolutions (float32 and float64; rates 2-3, strides 1-3, "
                  "'same'/'valid'/int padding, bias, groups=2) match torch.nn.functional.conv2d",
                  worst, "1e-5 float32, 1e-10 float64")


def _dx_assigned(dout, x, w, rate=1, stride=1, padding="same", groups=1, loop="pixels"):
    """dx of a backward pass that writes ``dxpad[window] = ...`` instead of ``+=``: where windows overlap, only the
    last one written counts. loop: "pixels" (groups, then output rows and columns, the notebook's loops) or
    "taps" (groups, then kernel taps, each a strided block of all output pixels)."""
    N, C, H, W = x.shape
    Cout, Cg, kh, kw = w.shape
    ph, pw = resolve_padding(padding, kh, rate), resolve_padding(padding, kw, rate)
    Ho, Wo = dout.shape[2:]
    dxpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    Og = Cout // groups
    for g in range(groups):
        ci, co = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        if loop == "pixels":
            for y in range(Ho):
                for x_ in range(Wo):
                    rows = slice(y * stride, y * stride + rate * (kh - 1) + 1, rate)
                    cols = slice(x_ * stride, x_ * stride + rate * (kw - 1) + 1, rate)
                    dxpad[:, ci, rows, cols] = np.tensordot(dout[:, co, y, x_], w[co], axes=(1, 0))
        else:
            for i in range(kh):
                for j in range(kw):
                    rows = slice(i * rate, i * rate + stride * (Ho - 1) + 1, stride)
                    cols = slice(j * rate, j * rate + stride * (Wo - 1) + 1, stride)
                    dxpad[:, ci, rows, cols] = np.einsum("nohw,oc->nchw", dout[:, co], w[co, :, i, j])
    return dxpad[:, :, ph:ph + H, pw:pw + W]


@exercise_check("2.3")
def exercise_2_3(atrous_conv2d_backward_naive):
    """(dx, dweight, dbias) of atrous_conv2d_backward_naive against torch autograd."""
    import torch
    import torch.nn.functional as F

    from minideeplab.reference.atrous import atrous_conv2d as ref
    from minideeplab.reference.atrous import atrous_conv2d_backward as ref_backward

    rng = np.random.default_rng(7)
    worst = 0.0
    for x, w, _, kw in _conv_cases():
        dout = rng.standard_normal(ref(x, w, None, **kw).shape).astype(x.dtype)
        call = f"atrous_conv2d_backward_naive(dout, {_describe(x, w, None, kw)})"
        got = _call_student(atrous_conv2d_backward_naive, "2.3", dout.copy(), x.copy(), w.copy(), **kw)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise ExerciseWrong(f"Exercise 2.3: {call} returned {type(got).__name__}; "
                                "expected a tuple (dx, dweight, dbias)")
        dx, dw, db = ref_backward(dout, x, w, **kw)
        rate, stride, padding, groups = kw["rate"], kw["stride"], kw["padding"], kw.get("groups", 1)
        p = resolve_padding(padding, w.shape[2], rate)
        pw = resolve_padding(padding, w.shape[3], rate)
        # gradient w.r.t. the padded input: what you get if you forget to crop the padding away
        xpad = torch.from_numpy(np.pad(x, ((0, 0), (0, 0), (p, p), (pw, pw)))).requires_grad_(True)
        F.conv2d(xpad, torch.from_numpy(w), stride=stride, dilation=rate, groups=groups).backward(
            torch.from_numpy(dout))
        wflip = np.ascontiguousarray(w[:, :, ::-1, ::-1])
        known_dx = {
            "this is the gradient of the padded input: crop the padding off (dx = dxpad[..., p:p+H, p:p+W]).":
                xpad.grad.numpy(),
            "dx used the flipped kernel: the forward pass multiplies xpad at tap (i, j) by weight[..., i, j], "
            "so the gradient sends dout back to the same tap with the same weight.":
                ref_backward(dout, x, wflip, **kw)[0],
        }
        for loop in ("pixels", "taps"):
            known_dx[f"dx was written with `=` where the windows overlap ({loop} loop): each input pixel kept only "
                     "the share of the last window that read it. Overlapping windows must accumulate, "
                     "dxpad[...] += ..."] = _dx_assigned(dout, x, w, **kw, loop=loop)
        known_dw = {
            "dweight is flipped: tap (i, j) of the kernel saw xpad[y*stride + i*rate, x*stride + j*rate].":
                dw[:, :, ::-1, ::-1],
        }
        if x.shape[0] > 1:  # `=` instead of `+=` keeps the last sample; stopping early, the first
            for n in (0, -1):
                known_dw[f"dweight must sum over the whole batch, not just one sample (matches sample {n})."] = \
                    ref_backward(dout[n:][:1], x[n:][:1], w, **kw)[1]
        known_db = {
            "dbias must sum over the batch too: shape (Cout,), dout.sum(axis=(0, 2, 3)).": dout.sum(axis=(2, 3)),
            "dbias has one entry per output channel: dout.sum(axis=(0, 2, 3)).": dout.sum(),
        }
        for name, g, e, known in (("dx", got[0], dx, known_dx), ("dweight", got[1], dw, known_dw),
                                  ("dbias", got[2], db, known_db)):
            rtol, atol = _tol(x.dtype, e)
            worst = max(worst, compare_arrays("2.3", f"{name} of {call}", g, e, rtol=rtol, atol=atol,
                                              known_mistakes=known))
    passed("2.3", f"dx, dweight and dbias of {len(_conv_cases())} convolutions (float32 and float64, "
                  "rates, strides, paddings, groups=2) match torch autograd", worst,
                  "1e-5 float32, 1e-10 float64")
