"""Checks for notebook 08, the dense CRF: exercises 8.1-8.3."""

from __future__ import annotations

import numpy as np

from minideeplab.grading.core import ExerciseWrong, compare_arrays, exercise_check, passed

__all__ = ["exercise_8_1", "exercise_8_2", "exercise_8_3"]


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


@exercise_check("8.1")
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


@exercise_check("8.2")
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


@exercise_check("8.3")
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
