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


# ---------------------------------------------------------------- notebook 08: dense CRF

_KERNEL_CASES = [  # (photo, (H, W), xy_std, rgb_std)
    ("coffee", (12, 16), 5.0, 20.0),
    ("astronaut", (10, 14), 3.0, 8.0),
    ("chelsea", (12, 12), 67.0, 3.0),   # DeepLab's appearance kernel: colours within a few levels only
]


def _photo(name, size):
    from minideeplab.data.photos import photograph

    return photograph(name, size=size)


def _appearance_variant(image, xy_std, rgb_std, mistake):
    """The appearance kernel written the way a student might, with one known mistake."""
    H, W = image.shape[:2]
    y, x = np.mgrid[0:H, 0:W]
    rgb = image.reshape(H * W, 3)
    if mistake == "order":  # column-major pixel order
        y, x, rgb = y.T, x.T, image.transpose(1, 0, 2).reshape(H * W, 3)
    pos = np.stack([x.ravel(), y.ravel()], axis=1).astype(np.float64)
    d_pos = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    if mistake == "uint8":         # difference and square both wrap around in uint8
        d_rgb = ((rgb[:, None, :] - rgb[None, :, :]) ** 2).sum(-1).astype(np.float64)
    elif mistake == "uint8_diff":  # the difference wraps, then it is converted
        d_rgb = ((rgb[:, None, :] - rgb[None, :, :]).astype(np.float64) ** 2).sum(-1)
    else:
        rgb = rgb.astype(np.float64)
        d_rgb = ((rgb[:, None, :] - rgb[None, :, :]) ** 2).sum(-1)
    if mistake == "sqrt":
        d_pos, d_rgb = np.sqrt(d_pos), np.sqrt(d_rgb)
    two = 1.0 if mistake == "half" else 2.0
    vx, vc = (xy_std, rgb_std) if mistake == "std" else (xy_std ** 2, rgb_std ** 2)
    k = np.exp(-d_pos / (two * vx) - d_rgb / (two * vc))
    if mistake == "diag":
        np.fill_diagonal(k, 0.0)
    return k


_KERNEL_HINTS = {
    "uint8": "the colours were subtracted (and squared) as uint8, where 10 - 20 wraps around to 246: convert "
             "first, rgb = image.reshape(-1, 3).astype(np.float64).",
    "uint8_diff": "the colour differences wrapped around in uint8 (10 - 20 = 246) before they were converted: "
                  "convert the image to float before subtracting.",
    "half": "the factor 1/2 is missing: exp(-|p_i - p_j|^2 / (2 xy_std^2) - |I_i - I_j|^2 / (2 rgb_std^2)).",
    "std": "divide by twice the variance, 2 * std**2, not by 2 * std.",
    "sqrt": "the exponent uses squared distances |p_i - p_j|^2 and |I_i - I_j|^2, not distances.",
    "diag": "the diagonal is 0, but k(f_i, f_i) = exp(0) = 1: in this course the kernel includes the pixel "
            "itself (the permutohedral lattice cannot leave it out).",
    "order": "the pixels are in column-major order: pixel i is row i // W, column i % W (row-major, the "
             "order of image.reshape(H * W, 3)).",
}


def exercise_8_1(appearance_kernel):
    """appearance_kernel(image, xy_std, rgb_std) -> (N, N) against torch (reference.crf.gaussian_kernel)."""
    from minideeplab.reference import crf as ref

    worst = 0.0
    for name, size, xy_std, rgb_std in _KERNEL_CASES:
        image = _photo(name, size)
        call = f"appearance_kernel({name} photo {size[0]}x{size[1]} uint8, xy_std={xy_std:g}, rgb_std={rgb_std:g})"
        got = appearance_kernel(image.copy(), xy_std, rgb_std)
        if isinstance(got, np.ndarray) and got.dtype.kind not in "f":
            raise ExerciseWrong(f"Exercise 8.1: {call} returned dtype {got.dtype}; expected floats "
                                "(kernel values lie between 0 and 1)")
        expected = ref.gaussian_kernel(ref.pixel_features(image, xy_std, rgb_std)).numpy()
        known = {text: _appearance_variant(image, xy_std, rgb_std, key) for key, text in _KERNEL_HINTS.items()}
        worst = max(worst, compare_arrays("8.1", f"{call}, K[i, j] for pixels i, j in row-major order", got,
                                          expected, rtol=1e-6, atol=1e-9, known_mistakes=known,
                                          check_dtype=False))
    passed("8.1", f"appearance kernels of {len(_KERNEL_CASES)} small photos equal torch's "
                  "exp(-|f_i - f_j|^2 / 2) on the reference features", worst, "1e-6 relative + 1e-9")


def _softmax_labels(a):
    e = np.exp(a - a.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _mean_field_cases():
    """(description, q, unary, kernels, weights): seeded (C, N) inputs and normalised torch kernels."""
    from minideeplab.reference import crf as ref

    rng = np.random.default_rng(8)
    cases = []
    for name, size, C, normalization, kernels in (
            ("coffee", (12, 16), 3, "symmetric", [(3.0, 3.0, None), (4.0, 20.0, 10.0)]),
            ("astronaut", (10, 14), 4, "symmetric", [(5.0, 67.0, 3.0)]),
            ("chelsea", (12, 12), 2, "after", [(3.0, 3.0, None), (4.0, 10.0, 13.0)])):
        image = _photo(name, size)
        N = size[0] * size[1]
        probs = _softmax_labels(2.0 * rng.standard_normal((C, N)))
        unary = -np.log(np.maximum(probs, 1e-5))
        q = _softmax_labels(rng.standard_normal((C, N)))  # not softmax(-unary): the two must not be confused
        mats = [ref.normalize_kernel(ref.gaussian_kernel(ref.pixel_features(image, xy, rgb)), normalization)
                for _, xy, rgb in kernels]
        what = " + ".join(f"{w:g} * k(xy_std={xy:g}" + (f", rgb_std={rgb:g})" if rgb else ")")
                          for w, xy, rgb in kernels)
        norm = "D^-1/2 K D^-1/2" if normalization == "symmetric" else "D^-1 K"
        desc = f"q, unary ({C}, {N}) from a {size[0]}x{size[1]} photo, kernels {what}, normalised {norm}"
        cases.append((desc, q, unary, [m.numpy() for m in mats], [w for w, _, _ in kernels]))
    return cases


def _mean_field_variant(q, unary, kernels, weights, mistake):
    import torch

    q, unary = torch.from_numpy(q), torch.from_numpy(unary)
    ks = [torch.from_numpy(k) for k in kernels]
    if mistake == "first_only":
        ks, weights = ks[:1], weights[:1]
    message = sum((1.0 if mistake == "no_weights" else w) * (q @ (k if mistake == "transpose" else k.T))
                  for w, k in zip(weights, ks))
    energy = {"unary_sign": unary + message, "subtract": -unary - message}.get(mistake, -unary + message)
    if mistake == "no_norm":
        return torch.exp(energy).numpy()
    if mistake == "no_norm_shifted":
        return torch.exp(energy - energy.max(dim=0, keepdim=True).values).numpy()
    return torch.softmax(energy, dim=1 if mistake == "pixels" else 0).numpy()


_MEAN_FIELD_HINTS = {
    "unary_sign": "the unary has the wrong sign: U = -log P is a cost, so it enters as exp(-U) (probable labels "
                  "must win).",
    "subtract": "the message is subtracted: with the Potts model a pixel is pulled towards the labels of the "
                "pixels like it, softmax(-unary + sum_m w_m q @ K_m.T).",
    "pixels": "the softmax runs over the pixels (axis 1): each pixel's probabilities must sum to 1 over the "
              "labels, axis 0.",
    "no_norm": "the result is not normalised: divide exp(...) by its sum over the labels (axis 0) at every pixel.",
    "no_norm_shifted": "the result is not normalised: after subtracting the maximum, still divide exp(...) by its "
                       "sum over the labels (axis 0) at every pixel.",
    "no_weights": "the kernel weights are missing: the message is sum_m weights[m] * (q @ kernels[m].T).",
    "first_only": "only the first kernel is used: sum the messages of all kernels.",
    "transpose": "the message to pixel i is sum_j K[i, j] q[:, j], i.e. q @ K.T: with the D^-1 K normalisation "
                 "K is not symmetric, so q @ K is a different (wrong) sum.",
}


def exercise_8_2(mean_field_update):
    """mean_field_update(q, unary, kernels, weights) against torch (reference.crf.mean_field_update), then
    10 of the student's updates against reference.crf.dense_crf."""
    import torch

    from minideeplab.reference import crf as ref

    worst = 0.0
    for desc, q, unary, kernels, weights in _mean_field_cases():
        args = (q.copy(), unary.copy(), [k.copy() for k in kernels], list(weights))
        got = mean_field_update(*args)
        for arg, before in (("q", q), ("unary", unary)):
            if not np.array_equal(args[0 if arg == "q" else 1], before):
                raise ExerciseWrong(f"Exercise 8.2: mean_field_update({desc}) changed its argument `{arg}` in "
                                    f"place; build new arrays instead (the caller still needs {arg}).")
        expected = ref.mean_field_update(torch.from_numpy(q), torch.from_numpy(unary),
                                         [torch.from_numpy(k) for k in kernels], weights).numpy()
        known = {text: _mean_field_variant(q, unary, kernels, weights, key)
                 for key, text in _MEAN_FIELD_HINTS.items()}
        worst = max(worst, compare_arrays("8.2", f"mean_field_update({desc})", got, expected, rtol=1e-9,
                                          atol=1e-12, known_mistakes=known))

    # ten updates from Q = softmax(-U) are the dense CRF itself
    image = _photo("coffee", (12, 16))
    C, N = 3, image.shape[0] * image.shape[1]
    rng = np.random.default_rng(80)
    probs = _softmax_labels(3.0 * rng.standard_normal((C, N)))
    params = dict(pos_w=3.0, pos_xy_std=3.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0)
    unary = -np.log(np.maximum(probs, ref.PROB_FLOOR))
    kernels = [ref.normalize_kernel(ref.gaussian_kernel(ref.pixel_features(image, xy, rgb))).numpy()
               for xy, rgb in ((3.0, None), (67.0, 3.0))]
    qi = _softmax_labels(-unary)
    for _ in range(10):
        qi = mean_field_update(qi, unary, kernels, [params["pos_w"], params["bi_w"]])
        if not isinstance(qi, np.ndarray) or qi.shape != (C, N):
            raise ExerciseWrong(f"Exercise 8.2: an update inside the 10-iteration loop returned "
                                f"{getattr(qi, 'shape', type(qi).__name__)}, expected ({C}, {N})")
    expected = ref.dense_crf(probs.reshape(C, *image.shape[:2]), image, n_iters=10, **params)
    compare_arrays("8.2", "10 of your updates from Q = softmax(-unary) against reference.crf.dense_crf(n_iters=10) "
                          "on a 12x16 photo with 3 labels, Q (C, H, W)", qi.reshape(expected.shape), expected,
                   rtol=1e-5, atol=1e-6, check_dtype=False)
    passed("8.2", "3 single updates (2-4 labels, one or two kernels, both normalisations) match torch, and 10 "
                  "of your updates equal the reference dense CRF", worst, "1e-9; 1e-5 for the float32 CRF")


def _lattice_cases():
    """(description, lattice, values (M+1, C) with row 0 = 0): a 2-D and a 5-D lattice of small photos."""
    from minideeplab.scratch.crf import build_lattice  # builds the input; the answer is compared with torch
    from minideeplab.scratch.crf import pixel_features

    rng = np.random.default_rng(83)
    cases = []
    for name, size, xy_std, rgb_std, C, dtype in (("coffee", (12, 16), 3.0, None, 2, np.float64),
                                                  ("astronaut", (10, 14), 5.0, 20.0, 3, np.float64),
                                                  ("chelsea", (16, 16), 2.0, None, 2, np.float32)):
        lattice = build_lattice(pixel_features(_photo(name, size), xy_std, rgb_std))
        values = rng.random((lattice.n_points + 1, C)).astype(dtype)
        values[0] = 0.0
        feats = "positions" if rgb_std is None else "positions and colours"
        desc = (f"lattice of a {size[0]}x{size[1]} photo's {feats} (d={lattice.dim}, {lattice.n_points} points), "
                f"values ({lattice.n_points + 1}, {C}) {np.dtype(dtype).name}")
        cases.append((desc, lattice, values))
    return cases


def _blur_variant(lattice, values, mistake):
    nb = np.asarray(lattice.neighbours)
    passes = {"first_only": 1, "d_dirs": nb.shape[0] - 1}.get(mistake, nb.shape[0])
    v = values.astype(np.float64)
    for j in range(passes):
        left, right = nb[j, :, 0], nb[j, :, 1]
        if mistake == "inplace":  # one point after the other, reading neighbours already blurred in this pass
            for m in range(1, v.shape[0]):
                v[m] = v[m] + 0.5 * (v[left[m]] + v[right[m]])
            continue
        if mistake == "no_half":
            v = v + v[left] + v[right]
        elif mistake == "quarter":
            v = 0.5 * v + 0.25 * (v[left] + v[right])
        else:
            v = v + 0.5 * (v[left] + v[right])
        v[0] = 0.0
    return v


_BLUR_HINTS = {
    "inplace": "the blur was done in place: points updated earlier in a pass were read again by their "
               "neighbours. Each pass must read only the previous pass's values: new = v + 0.5 * (v[left] + "
               "v[right]), a new array.",
    "no_half": "the neighbours count fully: a pass is v[m] + (v[left] + v[right]) / 2, the kernel [1/2, 1, 1/2].",
    "quarter": "a pass is v[m] + (v[left] + v[right]) / 2, the kernel [1/2, 1, 1/2], not [1/4, 1/2, 1/4]: the "
               "overall scale is fixed once, by alpha in lattice_filter.",
    "first_only": "only the first direction was blurred: blur along every one of the d+1 directions, "
                  "j = 0 .. neighbours.shape[0] - 1, one after the other.",
    "d_dirs": "one direction is missing: the lattice has d+1 directions (neighbours.shape[0]), not d.",
}


def exercise_8_3(blur):
    """blur(lattice, values) against torch (reference.crf.lattice_blur)."""
    from minideeplab.reference import crf as ref

    worst = 0.0
    cases = _lattice_cases()
    for desc, lattice, values in cases:
        given = values.copy()
        got = blur(lattice, given)
        expected = ref.lattice_blur(lattice, values).numpy()
        known = {text: _blur_variant(lattice, values, key) for key, text in _BLUR_HINTS.items()}
        rtol = 1e-5 if values.dtype == np.float32 else 1e-12
        worst = max(worst, compare_arrays("8.3", f"blur({desc})", got, expected, rtol=rtol,
                                          atol=rtol * float(np.abs(expected).max()), known_mistakes=known))
        if not np.array_equal(given, values):
            raise ExerciseWrong(f"Exercise 8.3: blur({desc}) returns the right values but changed the array it "
                                "was given: start each pass from a new array (values = values + ...), not "
                                "`values += ...` or assignments into the input.")
    passed("8.3", f"the blur of {len(cases)} lattices (2-D positions, 5-D positions and colours; float64 and "
                  "float32) matches torch's lattice_blur", worst, "1e-12 float64, 1e-5 float32")
