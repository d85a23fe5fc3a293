"""Cases for the checks of notebook 12 (the CRF as a layer): merged into test_checks.py.

CORRECT holds minideeplab.scratch.crf's own functions, so these cases also prove that they agree with torch."""

import numpy as np

from minideeplab.scratch import crf


def step_student(dq_new, q, unary, kernels, weights, compat, mistake=None):
    """One mean-field step's backward with einsum and pixel-major arrays, as a student may write it."""
    Q, U, dQn = q.T, unary.T, dq_new.T                                   # (N, C)
    msgs = [np.einsum("ij,jc->ic", k, Q) for k in kernels]               # K_k Q
    m = sum(w * mk for w, mk in zip(weights, msgs))
    z = -U - np.einsum("lk,ik->il", compat, m)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    Qn = e / e.sum(axis=1, keepdims=True)
    s = Q if mistake == "old_q" else Qn
    dz = s * dQn if mistake == "no_rowsum" else s * (dQn - np.einsum("ic,ic->i", dQn, s)[:, None])
    dm = -np.einsum("il,lk->ik", dz, compat.T if mistake == "compat_not_t" else compat)
    dQ = sum(w * np.einsum("ji,jc->ic", k.T if mistake == "kernel_t" else k, dm) for w, k in zip(weights, kernels))
    if mistake == "dw_pixels":
        dw = np.stack([np.einsum("ic,ic->c", dm, mk) for mk in msgs])
    else:
        dw = np.array([np.einsum("ic,ic->", dm, mk) for mk in msgs])
    if mistake == "dw_times_w":
        dw = dw * np.asarray(weights)
    dcompat = -np.einsum("il,ik->lk", dz, m)
    if mistake == "dcompat_t":
        dcompat = dcompat.T
    du = dz.T if mistake == "unary_sign" else -dz.T
    return du, dQ.T, dw, dcompat


def step_in_place(dq_new, q, unary, kernels, weights, compat):
    """Right values, but dq_new is used as a work array."""
    du, dq, dw, dc = crf.mean_field_update_backward(dq_new, q, unary, kernels, weights, compat)
    dq_new *= 0.0
    return du, dq, dw, dc


def transposed_student(lattice, values, mistake=None):
    """The blur with the directions in reverse order, neighbours read as (left, right) pairs swapped: each pass is
    symmetric, so swapping is harmless."""
    nb = lattice.neighbours
    order = range(nb.shape[0]) if mistake in ("forward", "swapped_only") else reversed(range(nb.shape[0]))
    if mistake == "skip_first":
        order = range(nb.shape[0] - 1, 0, -1)
    for j in order:
        left, right = (nb[j, :, 0], nb[j, :, 1]) if mistake == "forward" else (nb[j, :, 1], nb[j, :, 0])
        values = values + 0.5 * (values[right] + values[left])
    if mistake == "float64":
        values = values.astype(np.float64)
    return values


def transposed_by_matrices(lattice, values):
    """B^T as the product of dense matrices, transposed: (B_d ... B_0)^T values."""
    M1 = values.shape[0]
    B = np.eye(M1)
    for j in range(lattice.neighbours.shape[0]):
        Bj = np.eye(M1)
        for m in range(1, M1):
            for n in lattice.neighbours[j, m]:
                Bj[m, n] += 0.5
        Bj[:, 0] = 0.0
        Bj[0] = 0.0
        B = Bj @ B
    return (B.T @ values.astype(np.float64)).astype(values.dtype)


def transposed_augmented(lattice, values):
    nb = lattice.neighbours
    for j in reversed(range(nb.shape[0])):
        values += 0.5 * (values[nb[j, :, 0]] + values[nb[j, :, 1]])
    return values


def window_student(values, features, k, mistake=None):
    """Zero-padded arrays and one slice per offset."""
    C, H, W = values.shape
    r = k // 2
    vp = np.pad(values, ((0, 0), (r, r), (r, r)))
    fp = np.pad(features, ((r, r), (r, r), (0, 0)))
    inside = np.pad(np.ones((H, W)), r)
    out = np.zeros_like(values)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if mistake == "no_centre" and dy == dx == 0:
                continue
            f = fp[r + dy:r + dy + H, r + dx:r + dx + W]
            weight = np.exp(-0.5 * ((features - f) ** 2).sum(-1)) * inside[r + dy:r + dy + H, r + dx:r + dx + W]
            out += weight * vp[:, r + dy:r + dy + H, r + dx:r + dx + W]
    return out


def window_roll(values, features, k):
    r = k // 2
    out = np.zeros_like(values)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            f = np.roll(features, (-dy, -dx), axis=(0, 1))
            out += np.exp(-0.5 * ((features - f) ** 2).sum(-1)) * np.roll(values, (-dy, -dx), axis=(1, 2))
    return out


def window_package(values, features, k):
    return crf.window_message_naive(values.transpose(1, 2, 0), crf.window_kernel(features, k)).transpose(2, 0, 1)


CORRECT = {
    "exercise_12_1": crf.mean_field_update_backward,
    "exercise_12_2": crf.lattice_blur_transposed,
    "exercise_12_3": window_package,
}
STUDENT_STYLE = {"exercise_12_1": step_student, "exercise_12_2": transposed_student,
                 "exercise_12_3": window_student}

WRONG = [
    ("exercise_12_1", lambda *a: step_student(*a, mistake="no_rowsum"), "lacks its sum over the labels"),
    ("exercise_12_1", lambda *a: step_student(*a, mistake="old_q"), "uses the q that came in"),
    ("exercise_12_1", lambda *a: step_student(*a, mistake="compat_not_t"), "compatibility is not transposed"),
    ("exercise_12_1", lambda *a: step_student(*a, mistake="kernel_t"), "under D^-1 K (this case) they are not"),
    ("exercise_12_1", lambda *a: step_student(*a, mistake="dw_pixels"), "(this sums over the pixels only)"),
    ("exercise_12_1", lambda *a: step_student(*a, mistake="dw_times_w"), "without w_k"),
    ("exercise_12_1", lambda *a: step_student(*a, mistake="unary_sign"), "dunary has the wrong sign"),
    ("exercise_12_1", lambda *a: step_student(*a, mistake="dcompat_t"), "dcompat is transposed"),
    ("exercise_12_1", lambda *a: step_student(*a)[:3], "expected a tuple (dunary, dq, dweights, dcompat)"),
    ("exercise_12_1", step_in_place, "changed its argument `dq_new` in place"),
    ("exercise_12_2", crf.lattice_blur, "this is the forward blur"),
    ("exercise_12_2", lambda *a: transposed_student(*a, mistake="forward"), "the adjoint test fails"),
    ("exercise_12_2", lambda *a: transposed_student(*a, mistake="swapped_only"), "swapping left and right changes"),
    ("exercise_12_2", lambda *a: transposed_student(*a, mistake="skip_first"), "direction 0 is missing"),
    ("exercise_12_2", lambda *a: transposed_student(*a, mistake="float64"), "dtype float64, expected float32"),
    ("exercise_12_2", transposed_augmented, "changed the array it was given"),
    ("exercise_12_3", window_roll, "np.roll wraps around"),
    ("exercise_12_3", lambda *a: window_student(*a, mistake="no_centre"), "the pixel itself"),
    ("exercise_12_3", lambda v, f, k: window_student(v, f, 2 * k + 1), "a k x k window reaches k // 2"),
    ("exercise_12_3", lambda v, f, k: window_package(v, f, k) / window_package(np.ones_like(v), f, k),
     "divided by the window's sum of weights"),
    ("exercise_12_3", lambda v, f, k: window_package(v, f, k)[:, 1:], "shape"),
]
