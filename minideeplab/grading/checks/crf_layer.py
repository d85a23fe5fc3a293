"""Checks for notebook 12, the CRF as a layer: exercises 12.1-12.3."""

from __future__ import annotations

import functools

import numpy as np

from minideeplab.grading.checks.backprop import _distinct, _triple, _unchanged
from minideeplab.grading.checks import crf as _crf_checks
from minideeplab.grading.checks.crf import _lattice_cases, _softmax_labels
from minideeplab.grading.core import ExerciseWrong, compare_arrays, exercise_check, passed

__all__ = ["exercise_12_1", "exercise_12_2", "exercise_12_3"]


@functools.lru_cache(maxsize=16)
def _resized(name, size):
    return _crf_checks._photo(name, size)


def _photo(name, size):
    """The photograph at size (resizing one takes a few tenths of a second: done once per process)."""
    return _resized(name, size).copy()


# ---------------------------------------------------------------------------------------------
# 12.1 the backward of one mean-field step


def _step_cases():
    """(description, dq_new, q, unary, kernels, weights, compat): seeded (C, N) float64 inputs, torch's kernels.
    Potts first (compat symmetric), then a learned-looking compat (not symmetric), then D^-1 K (K not symmetric)."""
    from minideeplab.reference import crf as ref

    rng = np.random.default_rng(12)
    cases = []
    for name, size, C, normalization, weights, potts in (("coffee", (8, 10), 3, "symmetric", [3.0, 4.0], True),
                                                          ("astronaut", (8, 8), 4, "symmetric", [2.0, 5.0], False),
                                                          ("chelsea", (9, 9), 3, "after", [3.0, 4.0], False)):
        image = _photo(name, size)
        N = size[0] * size[1]
        mats = [ref.normalize_kernel(ref.gaussian_kernel(ref.pixel_features(image, xy, rgb)), normalization).numpy()
                for xy, rgb in ((3.0, None), (10.0, 13.0))]
        compat = 1.0 - np.eye(C)
        if not potts:
            compat = compat + 0.5 * rng.standard_normal((C, C))
        q = _softmax_labels(rng.standard_normal((C, N)))
        unary = -np.log(_softmax_labels(2.0 * rng.standard_normal((C, N))))
        dq_new = rng.standard_normal((C, N))
        norm = "D^-1/2 K D^-1/2" if normalization == "symmetric" else "D^-1 K"
        mu = "Potts 1 - I" if potts else "1 - I + noise (not symmetric)"
        desc = (f"{size[0]}x{size[1]} photo, C={C}, N={N}, kernels {weights[0]:g} * k(xy 3) + {weights[1]:g} * "
                f"k(xy 10, rgb 13) normalised {norm}, compat {mu}")
        cases.append((desc, dq_new, q, unary, mats, weights, compat))
    return cases


def _step_autograd(dq_new, q, unary, kernels, weights, compat):
    """(dunary, dq, dweights, dcompat) of <dq_new, reference.crf.mean_field_update(...)> by torch autograd."""
    import torch

    from minideeplab.reference import crf as ref

    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for k, v in (("unary", unary), ("q", q), ("weights", weights), ("compat", compat))}
    q_new = ref.mean_field_update(t["q"], t["unary"], [torch.from_numpy(k) for k in kernels], list(t["weights"]),
                                  t["compat"])
    (q_new * torch.from_numpy(dq_new)).sum().backward()
    return tuple(t[k].grad.numpy() for k in ("unary", "q", "weights", "compat"))


def _step_variant(dq_new, q, unary, kernels, weights, compat, mistake):
    """The step's backward written with one known mistake -> (dunary, dq, dweights, dcompat)."""
    messages = [q @ k.T for k in kernels]
    m = sum(w * mk for w, mk in zip(weights, messages))
    z = -unary - compat @ m
    e = np.exp(z - z.max(axis=0, keepdims=True))
    q_new = e / e.sum(axis=0, keepdims=True)
    s = q if mistake == "old_q" else q_new
    dz = s * dq_new if mistake == "no_rowsum" else s * (dq_new - np.sum(dq_new * s, axis=0, keepdims=True))
    dm = -(compat @ dz) if mistake == "compat_not_t" else -(compat.T @ dz)
    dq = sum((1.0 if mistake == "dq_no_w" else w) * (dm @ (k.T if mistake == "kernel_t" else k))
             for w, k in zip(weights, kernels))
    axis = {"dw_labels": 0, "dw_pixels": 1}.get(mistake)
    dweights = np.array([np.sum(dm * mk, axis=axis) * (w if mistake == "dw_times_w" else 1.0)
                         for w, mk in zip(weights, messages)])
    dcompat = {"dcompat_t": -(m @ dz.T), "dcompat_sign": dz @ m.T}.get(mistake, -(dz @ m.T))
    return (dz if mistake == "unary_sign" else -dz), dq, dweights, dcompat


_STEP_HINTS = {
    "no_rowsum": "the softmax's backward lacks its sum over the labels: dz = q' * (dq' - sum_l dq'[l] q'[l]), "
                 "the subtraction taken at every pixel (q' the step's output).",
    "old_q": "the softmax's backward uses the q that came in; it needs the softmax's own output q' = the new q: "
             "dz = q' * (dq' - sum_l dq' q'). Recompute the forward first.",
    "compat_not_t": "the compatibility is not transposed: z = -unary - compat @ m, so dm = -compat.T @ dz "
                    "(compat @ dz is the same only for a symmetric compat such as Potts; a learned one is not).",
    "kernel_t": "dq uses K.T: the forward is q @ K.T, so its backward is dm @ K. Under the symmetric normalisation "
                "D^-1/2 K D^-1/2 the two are the same matrix; under D^-1 K (this case) they are not.",
    "dq_no_w": "the kernel weights are missing in dq: dq = sum_k w_k (dm @ K_k).",
    "dw_labels": "dweights[k] is one number per kernel: sum dm * (q @ K_k.T) over the labels AND the pixels "
                 "(this sums over the labels only).",
    "dw_pixels": "dweights[k] is one number per kernel: sum dm * (q @ K_k.T) over the labels AND the pixels "
                 "(this sums over the pixels only).",
    "dw_times_w": "dweights[k] = sum dm * (q @ K_k.T), without w_k: the message is linear in w_k, and its "
                  "derivative with respect to w_k is K_k's message alone.",
    "unary_sign": "dunary has the wrong sign: z = -unary - ..., so dunary = -dz.",
    "dcompat_t": "dcompat is transposed: z[l] = -sum_l' compat[l, l'] m[l'], so dcompat[l, l'] = -sum_i dz[l, i] "
                 "m[l', i], i.e. -dz @ m.T.",
    "dcompat_sign": "dcompat has the wrong sign: z = -unary - compat @ m, so dcompat = -dz @ m.T.",
}
_STEP_OUTPUTS = ("dunary", "dq", "dweights", "dcompat")


@exercise_check("12.1")
def exercise_12_1(mean_field_step_backward):
    """mean_field_step_backward(dq_new, q, unary, kernels, weights, compat) -> (dunary, dq, dweights, dcompat)
    against torch autograd through reference.crf.mean_field_update."""
    worst = 0.0
    cases = _step_cases()
    for desc, dq_new, q, unary, kernels, weights, compat in cases:
        args = dict(dq_new=dq_new, q=q, unary=unary, compat=compat)
        given = {k: v.copy() for k, v in args.items()}
        call = f"mean_field_step_backward({desc})"
        got = _triple("12.1", call, mean_field_step_backward(given["dq_new"], given["q"], given["unary"],
                                                             [k.copy() for k in kernels], list(weights),
                                                             given["compat"]), _STEP_OUTPUTS)
        _unchanged("12.1", call, args, given)
        expected = _step_autograd(dq_new, q, unary, kernels, weights, compat)
        variants = {key: _step_variant(dq_new, q, unary, kernels, weights, compat, key) for key in _STEP_HINTS}
        for i, name in enumerate(_STEP_OUTPUTS):
            rtol, scale = 1e-10, float(np.abs(expected[i]).max())
            known = _distinct({text: variants[key][i] for key, text in _STEP_HINTS.items()}, expected[i], rtol,
                              rtol * scale)
            worst = max(worst, compare_arrays("12.1", f"{name} of {call}", got[i], expected[i], rtol=rtol,
                                              atol=rtol * scale, known_mistakes=known))
    passed("12.1", f"dunary, dq, dweights and dcompat of one mean-field step match torch autograd on {len(cases)} "
                   "cases (Potts, a compat that is not symmetric, the D^-1 K normalisation)", worst,
           "1e-10 of the largest entry")


# ---------------------------------------------------------------------------------------------
# 12.2 the transpose of the lattice blur


def _blur_transposed_torch(lattice, values):
    """B^T values by scatter-adds, without assuming that any pass is symmetric: B_j = Z (I + G_left/2 + G_right/2)
    (G a gather, Z zeroing point 0), so B_j^T = (I + G_left^T/2 + G_right^T/2) Z, G^T a scatter-add; the passes
    transposed in reverse order. Point 0 ("none") is always 0 on the way in, so its entry of the result is 0."""
    import torch

    nb = torch.as_tensor(np.asarray(lattice.neighbours, dtype=np.int64))
    v = torch.as_tensor(np.asarray(values, dtype=np.float64)).clone()
    for j in reversed(range(nb.shape[0])):
        v[0] = 0
        v = v + 0.5 * (torch.zeros_like(v).index_add_(0, nb[j, :, 0], v) +
                       torch.zeros_like(v).index_add_(0, nb[j, :, 1], v))
    v[0] = 0
    return v.numpy()


def _adjoint_gap(lattice, x, y, bt_y):
    """(<B x, y>, <x, B^T y>, |difference| / (|B x| |y|)): B x by the twin, B^T y the answer, in float64."""
    from minideeplab.reference import crf as ref

    bx = ref.lattice_blur(lattice, x.astype(np.float64)).numpy()
    lhs, rhs = float(np.sum(bx * y)), float(np.sum(x * np.asarray(bt_y, dtype=np.float64)))
    return lhs, rhs, abs(lhs - rhs) / (np.linalg.norm(bx) * np.linalg.norm(y))


def _transposed_variant(lattice, values, mistake):
    nb = np.asarray(lattice.neighbours)
    order = {"forward": range(nb.shape[0]), "skip_first": range(nb.shape[0] - 1, 0, -1)}.get(
        mistake, range(nb.shape[0] - 1, -1, -1))
    v = values.astype(np.float64)
    for j in order:
        left, right = nb[j, :, 0], nb[j, :, 1]
        if mistake == "inplace":
            for m in range(1, v.shape[0]):
                v[m] = v[m] + 0.5 * (v[left[m]] + v[right[m]])
            continue
        v = v + 0.5 * (v[left] + v[right])
        v[0] = 0.0
    return v


_TRANSPOSED_HINTS = {
    "forward": "this is the forward blur, directions 0, 1, ..., d (swapping left and right changes nothing: each "
               "pass is symmetric). Each pass B_j is a symmetric matrix, but the passes do not commute where the "
               "lattice ends, so (B_d ... B_1 B_0)^T = B_0 B_1 ... B_d: blur direction d first, direction 0 last.",
    "skip_first": "direction 0 is missing: range(d, 0, -1) stops before 0. Blur directions d, d-1, ..., 0, e.g. "
                  "for j in reversed(range(neighbours.shape[0])).",
    "inplace": "the blur was done in place: each pass must read only the previous pass's values (a new array), "
               "as in exercise 8.3.",
}


@exercise_check("12.2")
def exercise_12_2(blur_transposed):
    """blur_transposed(lattice, values): the adjoint test <B x, y> = <x, B^T y> with B the twin's lattice_blur,
    then B^T y entry by entry against scatter-adds in torch."""
    rng = np.random.default_rng(122)
    worst = 0.0
    cases = _lattice_cases()
    for desc, lattice, y in cases:
        given = y.copy()
        call = f"blur_transposed({desc})"
        got = blur_transposed(lattice, given)
        expected = _blur_transposed_torch(lattice, y).astype(y.dtype)
        rtol = 1e-5 if y.dtype == np.float32 else 1e-12
        known = {text: _transposed_variant(lattice, y, key) for key, text in _TRANSPOSED_HINTS.items()}
        if isinstance(got, np.ndarray) and got.shape == y.shape and np.all(np.isfinite(got)):
            x = rng.standard_normal(y.shape)
            x[0] = 0.0
            lhs, rhs, gap = _adjoint_gap(lattice, x, y, got)
            if gap > rtol:
                apart = np.abs(got.astype(np.float64) - expected).max() / np.abs(expected).max()
                hint = next((f"\n  Hint: {text}" for text, wrong in known.items()
                             if np.allclose(got, wrong, rtol=rtol, atol=rtol * np.abs(expected).max())), "")
                raise ExerciseWrong(
                    f"Exercise 12.2: the adjoint test fails for {call}: with x random (point 0 zero) and B the "
                    f"blur, <B x, y> = {lhs:.10g} but <x, blur_transposed(y)> = {rhs:.10g}, apart by {gap:.2e} of "
                    f"|B x| |y| (tolerance {rtol:g}); your B^T y is off by up to {apart:.1%} of its largest entry."
                    f"{hint}")
        worst = max(worst, compare_arrays("12.2", f"{call}, B^T y entry by entry", got, expected, rtol=rtol,
                                          atol=rtol * float(np.abs(expected).max()), known_mistakes=known))
        if not np.array_equal(given, y):
            raise ExerciseWrong(f"Exercise 12.2: {call} returns the right values but changed the array it was "
                                "given: start each pass from a new array (values = values + ...).")
    passed("12.2", f"the transposed blur of {len(cases)} lattices passes the adjoint test <B x, y> = <x, B^T y> and "
                   "matches B^T y by scatter-adds in torch", worst, "1e-12 float64, 1e-5 float32")


# ---------------------------------------------------------------------------------------------
# 12.3 the window (ConvCRF) message


_WINDOW_CASES = [  # (photo, (H, W), k, xy_std, rgb_std, C)
    ("coffee", (10, 12), 3, 3.0, 10.0, 2),
    ("astronaut", (9, 11), 5, 5.0, 20.0, 3),
    ("chelsea", (8, 8), 7, 2.0, None, 2),
    ("coffee", (7, 9), 11, 80.0, 13.0, 2),   # ConvCRF's default window, larger than the image
]


def _window_inputs():
    """(description, values (C, H, W), features (H, W, d), k) in float64, seeded."""
    from minideeplab.reference import crf as ref

    rng = np.random.default_rng(123)
    out = []
    for name, (H, W), k, xy, rgb, C in _WINDOW_CASES:
        features = ref.pixel_features(_photo(name, (H, W)), xy, rgb).numpy().reshape(H, W, -1)
        values = rng.random((C, H, W))
        feats = f"positions / {xy:g}" + (f" and colours / {rgb:g}" if rgb else "")
        out.append((f"values ({C}, {H}, {W}), features ({H}, {W}, {features.shape[2]}) of a {name} photo's {feats}, "
                    f"k={k}", values, features, k))
    return out


def _window_reference(values, features, k):
    """(K * window) @ values with K torch's exact Gaussian kernel of all pixel pairs, restricted to |dy|, |dx| <=
    k // 2."""
    import torch

    from minideeplab.reference import crf as ref

    C, H, W = values.shape
    K = ref.gaussian_kernel(torch.from_numpy(features.reshape(H * W, -1)))
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    inside = ((y[:, None] - y[None, :]).abs() <= k // 2) & ((x[:, None] - x[None, :]).abs() <= k // 2)
    return (torch.from_numpy(values.reshape(C, H * W)) @ (K * inside).T).reshape(C, H, W).numpy()


def _window_variant(values, features, k, mistake):
    C, H, W = values.shape
    r = k if mistake == "radius_k" else k // 2
    out = np.zeros_like(values)
    norm = np.zeros((H, W))
    for dy in range(-r, r if mistake == "asymmetric" else r + 1):
        for dx in range(-r, r if mistake == "asymmetric" else r + 1):
            if mistake == "no_centre" and dy == dx == 0:
                continue
            if mistake == "roll":
                shifted_f = np.roll(features, (-dy, -dx), axis=(0, 1))
                shifted_v = np.roll(values, (-dy, -dx), axis=(1, 2))
                w = np.exp(-0.5 * np.sum((features - shifted_f) ** 2, axis=-1))
                out += w * shifted_v
                continue
            y0, y1, x0, x1 = max(0, -dy), min(H, H - dy), max(0, -dx), min(W, W - dx)
            if y0 >= y1 or x0 >= x1:
                continue
            d2 = np.sum((features[y0:y1, x0:x1] - features[y0 + dy:y1 + dy, x0 + dx:x1 + dx]) ** 2, axis=-1)
            w = np.exp(-(d2 if mistake == "half" else 0.5 * d2))
            if mistake == "mismatch":  # the weight of neighbour (dy, dx), the value of (-dy, -dx) (0 outside)
                vp = np.pad(values, ((0, 0), (r, r), (r, r)))
                out[:, y0:y1, x0:x1] += w * vp[:, r + y0 - dy:r + y1 - dy, r + x0 - dx:r + x1 - dx]
                continue
            out[:, y0:y1, x0:x1] += w * values[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx]
            norm[y0:y1, x0:x1] += w
    return out / norm if mistake == "normalised" else out


_WINDOW_HINTS = {
    "roll": "np.roll wraps around: pixels of the opposite border were counted as neighbours. Where the window leaves "
            "the image there is nothing: slice the overlapping part instead (as notebook 02's padding does).",
    "no_centre": "the centre of the window (the pixel itself) is missing: as in the full kernel, k(f_i, f_i) = 1 "
                 "counts.",
    "radius_k": "the window is 2k+1 wide: a k x k window reaches k // 2 pixels to each side.",
    "asymmetric": "range(-r, r) stops at r - 1: the window is one pixel short on one side; use range(-r, r + 1).",
    "half": "the factor 1/2 is missing: exp(-|f_i - f_j|^2 / 2).",
    "mismatch": "the weight and the value come from different neighbours: the weight of the pixel at (dy, dx) "
                "multiplies the value at (-dy, -dx). Take both from the same neighbour (y + dy, x + dx).",
    "normalised": "the message was divided by the window's sum of weights: return the raw sum here (the CRF "
                  "normalises afterwards, as for the full kernel).",
}


@exercise_check("12.3")
def exercise_12_3(window_message):
    """window_message(values, features, k) -> (C, H, W) against torch's exact kernel restricted to the window."""
    worst = 0.0
    cases = _window_inputs()
    for desc, values, features, k in cases:
        args = dict(values=values, features=features)
        given = {n: a.copy() for n, a in args.items()}
        call = f"window_message({desc})"
        got = window_message(given["values"], given["features"], k)
        _unchanged("12.3", call, args, given)
        expected = _window_reference(values, features, k)
        rtol, scale = 1e-10, float(np.abs(expected).max())
        known = _distinct({text: _window_variant(values, features, k, key) for key, text in _WINDOW_HINTS.items()},
                          expected, rtol, rtol * scale)
        worst = max(worst, compare_arrays("12.3", call, got, expected, rtol=rtol, atol=rtol * scale,
                                          known_mistakes=known))
    passed("12.3", f"the window message for k = {', '.join(str(c[2]) for c in _WINDOW_CASES)} equals torch's exact "
                   "Gaussian kernel restricted to the k x k window, times the values", worst,
           "1e-10 of the largest entry")
