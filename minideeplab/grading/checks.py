"""One check per exercise: ``checks.exercise_N_K(student_function)``.

Each check runs the student's function on fixed, seeded inputs and compares it with a PyTorch
measurement or reference (never with the scratch implementations), shape first, then dtype and NaN,
then values. It prints one line on success and raises ExerciseWrong otherwise, with a hint
when the answer matches a known mistake; an ExerciseNotDone from an unfinished stub passes
through untouched.
"""

from __future__ import annotations

import numpy as np

from minideeplab.grading.core import ExerciseWrong, compare_arrays, passed
from minideeplab.scratch._validate import resolve_padding  # the one padding rule, shared with the reference

# ---------------------------------------------------------------- notebook 01: receptive fields

_RF_CASES = [  # (kernel, stride, rate, padding) per layer; simple first
    [(3, 1, 1, 1)],
    [(3, 1, 2, 2)],
    [(3, 1, 2, 2)] * 3,
    [(3, 2, 1, 1), (3, 1, 2, 2), (3, 1, 4, 4)],
    [(7, 2, 1, 3), (3, 2, 1, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2)],
    [(3, 1, 1, 0), (3, 2, 1, 0), (5, 1, 2, 1)],
    [(2, 2, 1, 0), (3, 1, 2, 0)],
]


def _measured(layers):
    from minideeplab.reference.receptive import measure_receptive_field

    return measure_receptive_field(layers)


def _first_bad(got, expected) -> int:
    return int(np.argmax(~np.isclose(np.asarray(got, dtype=float), np.asarray(expected, dtype=float))))


def _as_number(v, exercise, call):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ExerciseWrong(f"Exercise {exercise}: {call} returned {v!r} ({type(v).__name__}), expected a number")
    return v


def exercise_1_1(effective_kernel_size):
    """effective_kernel_size(kernel, rate) against the field of one conv measured by torch autograd."""
    cases = [(k, r) for k in (1, 2, 3, 5, 7) for r in (1, 2, 3, 6, 12)]
    got = np.array([_as_number(effective_kernel_size(k, r), "1.1", f"effective_kernel_size({k}, {r})")
                    for k, r in cases], dtype=float)
    expected = np.array([_measured([(k, 1, r, 0)]).size for k, r in cases], dtype=float)
    ks, rs = np.array(cases).T
    known = {
        "kernel*rate counts one gap too many: k taps leave k-1 gaps of rate pixels, plus the pixel you "
        "start on: rate*(kernel-1) + 1.": ks * rs,
        "rate*(kernel-1) counts the gaps but forgets the first tap's own pixel: add 1.": rs * (ks - 1),
        "kernel + rate - 1 adds the rate once; every one of the kernel-1 gaps grows to rate pixels.": ks + rs - 1,
        "rate*kernel - 1 is one short: rate*(kernel-1) + 1 (check kernel=1: it must be 1 for every rate).": ks * rs - 1,
    }
    what = "effective_kernel_size(kernel, rate) for kernel in (1, 2, 3, 5, 7) x rate in (1, 2, 3, 6, 12)"
    try:
        worst = compare_arrays("1.1", what, got, expected, rtol=0, atol=1e-9, known_mistakes=known,
                               check_dtype=False)
    except ExerciseWrong as e:
        i = _first_bad(got, expected)
        raise ExerciseWrong(f"{e}\n  first wrong case: effective_kernel_size(kernel={cases[i][0]}, "
                            f"rate={cases[i][1]}) returned {got[i]:g}, the measured field is "
                            f"{expected[i]:g} pixels wide") from None
    passed("1.1", f"{len(cases)} (kernel, rate) pairs equal the width of the field measured "
                  "with torch autograd", worst, "exact")


def _rf_variant(layers, mistake=None):
    """Receptive field (size, jump, start) by the recurrence, optionally with a known mistake."""
    size, jump, start = 1, 1, 0.0
    for k, s, r, p in layers:
        k_eff = k if mistake == "no_rate" else r * (k - 1) + 1
        j_used = jump * s if mistake == "jump_first" else jump
        size += (k_eff - 1) * (1 if mistake == "no_jump" else j_used)
        start += ((k_eff - 1) / 2 - p) * (1 if mistake == "start_no_jump" else j_used)
        jump *= s * r if mistake == "jump_rate" else s
    if mistake == "left_edge":
        start -= (size - 1) / 2
    return np.array([size, jump, start], dtype=float)


_RF_HINTS = {
    "no_jump": "the size grows by (k_eff - 1) input pixels per layer only at stride 1: after a stride, each "
               "step of a layer's kernel moves `jump` input pixels, so size += (k_eff - 1) * jump.",
    "jump_rate": "the jump is the product of the strides only: a rate spreads the taps of a kernel, but "
                 "neighbouring output pixels are still `stride` input steps apart.",
    "no_rate": "the field ignores the rate: use the effective kernel k_eff = rate*(kernel-1) + 1.",
    "jump_first": "jump was updated before size and start: a layer's kernel moves in the jump of its "
                  "input, so update size and start first, then jump *= stride.",
    "start_no_jump": "start moves by ((k_eff - 1)/2 - padding) pixels of the layer's input, i.e. that many "
                     "times the current jump in input pixels.",
    "left_edge": "start is the centre of output pixel 0's field, not its left edge: the left edge is "
                 "start - (size - 1)/2.",
}


def _rf_triple(got, call):
    if not isinstance(got, (np.ndarray, str)) and all(hasattr(got, a) for a in ("size", "jump", "start")):
        vals = (got.size, got.jump, got.start)
    else:
        try:
            vals = tuple(got)
        except TypeError:
            vals = ()
        if len(vals) != 3:
            raise ExerciseWrong(f"Exercise 1.2: {call} returned {got!r}; expected RF(size, jump, start)")
    return np.array([_as_number(v, "1.2", call) for v in vals], dtype=float)


def exercise_1_2(receptive_field):
    """receptive_field(layers) -> RF(size, jump, start) against torch gradient measurements."""
    worst = 0.0
    for layers in _RF_CASES:
        call = f"receptive_field({layers})"
        got = _rf_triple(receptive_field(layers), call)
        m = _measured(layers)
        expected = np.array([m.size, m.jump, m.start], dtype=float)
        known = {text: _rf_variant(layers, key) for key, text in _RF_HINTS.items()}
        what = f"(size, jump, start) of {call}, index 0 = size, 1 = jump, 2 = start"
        worst = max(worst, compare_arrays("1.2", what, got, expected, rtol=0, atol=1e-9,
                                          known_mistakes=known, check_dtype=False))
    passed("1.2", f"size, jump and start of {len(_RF_CASES)} stacks (strides, rates, paddings, an even "
                  "kernel) equal the fields measured from torch input gradients", worst, "exact")


def _footprint_variant(layers, mistake):
    offsets, jump = {0}, 1
    for k, s, r, _ in layers:
        step = {"no_jump": r, "jump_rate": r * jump}.get(mistake, r * jump)
        offsets = {o + step * t for o in offsets for t in range(k)}
        jump *= s * r if mistake == "jump_rate" else s
    lo = min(offsets)
    mask = np.zeros(max(offsets) - lo + 1, dtype=bool)
    mask[[o - lo for o in offsets]] = True
    return np.ones_like(mask) if mistake == "dense" else mask


_FOOTPRINT_HINTS = {
    "dense": "every pixel of the field is marked: the taps of a dilated kernel leave holes, and stacked "
             "layers add the tap offsets of each layer (a set of sums), they do not fill the span.",
    "no_jump": "the taps of a layer after a stride are rate * jump input pixels apart, not rate.",
    "jump_rate": "the jump is the product of the strides only, not of strides and rates.",
}


def exercise_1_3(footprint):
    """footprint(layers) -> bool mask over the field, against the non-zero input gradient of torch."""
    cases = [[(3, 1, 2, 2)], [(3, 1, 2, 2)] * 3, [(3, 1, 1, 1), (3, 1, 2, 2), (3, 1, 5, 5)],
             [(3, 2, 1, 1), (3, 1, 2, 2), (3, 1, 2, 2)], [(3, 1, 2, 2), (3, 1, 4, 4), (3, 1, 8, 8)],
             [(2, 2, 1, 0), (3, 1, 3, 0)]]
    for layers in cases:
        call = f"footprint({layers})"
        got = footprint(layers)
        if got is not None and not isinstance(got, np.ndarray):
            got = np.asarray(got)
        if isinstance(got, np.ndarray) and got.dtype != bool and got.dtype.kind in "iuf":
            got = got != 0  # path counts are fine too: non-zero means sampled
        expected = _measured(layers).footprint.any(axis=0)
        known = {text: _footprint_variant(layers, key) for key, text in _FOOTPRINT_HINTS.items()}
        compare_arrays("1.3", f"{call} (True where an input pixel of the field is sampled)", got, expected,
                       rtol=0, atol=0, known_mistakes=known)
    passed("1.3", f"footprints of {len(cases)} stacks equal the pixels with non-zero torch input "
                  "gradient", 0.0, "exact")


# ---------------------------------------------------------------- notebook 02: atrous convolution

def _torch_output_size(size, kernel, rate, stride, padding):
    import torch
    import torch.nn.functional as F

    p = resolve_padding(padding, kernel, rate)
    x = torch.zeros(1, 1, size, 1)
    return F.conv2d(x, torch.zeros(1, 1, kernel, 1), stride=stride, padding=(p, 0), dilation=(rate, 1)).shape[2]


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
    got = np.array([_as_number(conv_output_size(*c), "2.1", f"conv_output_size{c}") for c in cases], dtype=float)
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
        i = _first_bad(got, expected)
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


def _describe(x, w, bias, kw) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    b = ", bias" if bias is not None else ""
    return f"x {x.shape} {x.dtype}, weight {w.shape}{b}, {args}"


def _tol(dtype, expected):
    scale = float(np.max(np.abs(expected))) if np.size(expected) else 1.0
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    return rtol, rtol * max(scale, 1e-12)


def exercise_2_2(atrous_conv2d_naive):
    """atrous_conv2d_naive(x, weight, bias, rate, stride, padding, groups) against torch F.conv2d."""
    from minideeplab.reference.atrous import atrous_conv2d as ref

    worst = 0.0
    for x, w, bias, kw in _conv_cases():
        got = atrous_conv2d_naive(x.copy(), w.copy(), None if bias is None else bias.copy(), **kw)
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
        if bias is not None:
            known["the bias is missing: add bias[o] to every pixel of output channel o."] = \
                expected - bias[None, :, None, None]
        rtol, atol = _tol(x.dtype, expected)
        worst = max(worst, compare_arrays("2.2", f"atrous_conv2d_naive({_describe(x, w, bias, kw)})", got,
                                          expected, rtol=rtol, atol=atol, known_mistakes=known))
    passed("2.2", f"{len(_conv_cases())} convolutions (float32 and float64; rates 2-3, strides 1-3, "
                  "'same'/'valid'/int padding, bias, groups=2) match torch.nn.functional.conv2d",
                  worst, "1e-5 float32, 1e-10 float64")


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
        got = atrous_conv2d_backward_naive(dout.copy(), x.copy(), w.copy(), **kw)
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
