"""Cases for the checks of notebook 06 (backpropagation): merged into test_checks.py."""

import numpy as np

from minideeplab.gradcheck import numerical_gradient
from minideeplab.scratch.layers import batch_norm2d, batch_norm2d_backward, softmax_cross_entropy


def fd_student(f, x, h=1e-5, mistake=None):
    """Finite differences as a student writes them (on copies), one optional mistake."""
    h = {"big": 1e-2, "tiny": 1e-10}.get(mistake, h)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += h
        minus[i] -= h
        if mistake == "forward":
            grad[i] = (f(plus) - f(x)) / h
        elif mistake == "one_h":
            grad[i] = (f(plus) - f(minus)) / h
        elif mistake == "together":
            grad[i] = (f(x + h) - f(x - h)) / (2 * h)
        else:
            grad[i] = (f(plus) - f(minus)) / (2 * h)
    if mistake == "float32":
        grad = grad.astype(np.float32)
    return grad


def fd_in_place(f, x, h=1e-5, restore=None):
    """In place, forgetting to put the entry back, or (restore="arithmetic") adding h back: off by rounding."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x[i] += h
        f_plus = f(x)
        x[i] -= 2 * h
        grad[i] = (f_plus - f(x)) / (2 * h)
        if restore == "arithmetic":
            x[i] += h
    return grad


def bn_library(dy, x, gamma, eps=1e-5):
    C = x.shape[1]
    _, cache = batch_norm2d(x, gamma, np.zeros_like(gamma), np.zeros(C, x.dtype), np.ones(C, x.dtype), True, eps=eps)
    return batch_norm2d_backward(dy, cache)


def bn_student(dy, x, gamma, eps=1e-5, mistake=None):
    """Batch norm backward by the chain rule through mean and variance (CS231n style), one optional mistake."""
    axes = (0, 2, 3)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    g = gamma.reshape(1, -1, 1, 1)
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc ** 2).sum(axis=axes, keepdims=True) / (m - 1 if mistake == "unbiased" else m)
    std = np.sqrt(var + eps)
    xhat = xc / std
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * (x if mistake == "dgamma_x" else xhat)).sum(axis=axes)
    dxhat = dy * g
    if mistake == "eval":
        return dxhat / std, dgamma, dbeta
    dvar = (dxhat * xc).sum(axis=axes, keepdims=True) * -0.5 * std ** -3
    dmean = -(dxhat / std).sum(axis=axes, keepdims=True) + dvar * -2 * xc.mean(axis=axes, keepdims=True)
    if mistake == "no_var":
        dvar = 0
    dx = dxhat / std + dvar * 2 * xc / m + dmean / m
    if mistake == "keepdims":
        dbeta = dy.sum(axis=axes, keepdims=True)
    return dx, dgamma, dbeta


def bn_in_place(dy, x, gamma, eps=1e-5):
    """Right values, but dy is centred in place."""
    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    invstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * invstd
    dbeta, dgamma = dy.sum(axis=axes), (dy * xhat).sum(axis=axes)
    dy -= dy.mean(axis=axes, keepdims=True)
    dy -= xhat * (dy * xhat).mean(axis=axes, keepdims=True)
    return gamma.reshape(1, -1, 1, 1) * invstd * dy, dgamma, dbeta


def ce_student(logits, target, ignore_index=255, mistake=None):
    """Softmax cross-entropy with one-hot labels, as a student writes it, one optional mistake."""
    N, C, H, W = logits.shape
    t = target.astype(np.int64)
    keep = t != (255 if mistake == "hardcoded" else ignore_index)
    t = np.where(keep, t, 0)  # with "hardcoded", a label -1 stays and indexes the last class
    onehot = np.eye(C, dtype=logits.dtype)[t].transpose(0, 3, 1, 2)
    axis = -1 if mistake == "last_axis" else 1  # "last_axis": the softmax over the columns, numpy's habit
    z = logits if mistake == "no_max" else logits - logits.max(axis=axis, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):  # "no_max" overflows, as it should
        e = np.exp(z)
        p = e / e.sum(axis=axis, keepdims=True)
        if axis == -1:
            nll = -(np.log(p) * onehot).sum(axis=1)
        else:
            nll = np.log(e.sum(axis=1)) - (z * onehot).sum(axis=1)  # -log softmax[label], without log(0)
    count = {"all": N * H * W, "sum": 1}.get(mistake, keep.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = (nll * keep).sum() / count if mistake != "zero_loss" or keep.any() else 0.0
        d = (p - (0 if mistake == "no_onehot" else onehot)) / count
    if mistake == "sign":
        d = -d
    if mistake != "unmasked":
        with np.errstate(invalid="ignore"):
            d = d * keep[:, None]
    if mistake == "all_nan":  # no guard: 0 / 0 on the all-ignored batch
        return loss, d.astype(logits.dtype)
    if not keep.any():
        d = np.zeros_like(logits)
    return loss, d.astype(logits.dtype)


CORRECT = {
    "exercise_6_1": numerical_gradient,
    "exercise_6_2": bn_library,
    "exercise_6_3": softmax_cross_entropy,
}
STUDENT_STYLE = {"exercise_6_1": fd_student, "exercise_6_2": bn_student, "exercise_6_3": ce_student}

WRONG = [
    ("exercise_6_1", lambda f, x, h=1e-5: fd_student(f, x, h, "forward"), "one-sided difference"),
    ("exercise_6_1", lambda f, x, h=1e-5: fd_student(f, x, h, "one_h"), "divide the difference by 2h"),
    ("exercise_6_1", lambda f, x, h=1e-5: fd_student(f, x, h, "big"), "step of 0.01: too large"),
    ("exercise_6_1", lambda f, x, h=1e-5: fd_student(f, x, h, "tiny"), "step of 1e-10: too small"),
    ("exercise_6_1", lambda f, x, h=1e-5: fd_student(f, x, h, "together"), "one entry at a time"),
    ("exercise_6_1", lambda f, x, h=1e-5: fd_student(f, x, h, "float32"), "dtype float32, expected float64"),
    ("exercise_6_1", fd_in_place, "changed its argument `x`"),
    ("exercise_6_1", lambda f, x, h=1e-5: fd_in_place(f, x, h, restore="arithmetic"),
     "Save the entry first and put it back"),
    ("exercise_6_2", lambda *a, **k: bn_student(*a, **k, mistake="eval"), "eval-mode gradient"),
    ("exercise_6_2", lambda *a, **k: bn_student(*a, **k, mistake="no_var"), "variance's term is missing"),
    ("exercise_6_2", lambda *a, **k: bn_student(*a, **k, mistake="unbiased"), "biased batch variance"),
    ("exercise_6_2", lambda *a, **k: bn_student(*a, **k, mistake="dgamma_x"), "not by x"),
    ("exercise_6_2", lambda *a, **k: bn_student(*a, **k, mistake="keepdims"), "shape (C,)"),
    ("exercise_6_2", lambda *a, **k: bn_student(*a, **k)[:2], "expected a tuple (dx, dgamma, dbeta)"),
    ("exercise_6_2", bn_in_place, "changed its argument `dy`"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k, mistake="all"), "NOT ignored"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k, mistake="unmasked"), "not 0 at"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k, mistake="sign"), "wrong sign"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k, mistake="last_axis"), "the softmax ran over the last axis"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k, mistake="no_onehot"), "subtract 1 at each counted"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k, mistake="sum"), "their mean"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k, mistake="hardcoded"), "use the ignore_index"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k, mistake="no_max"), "np.exp overflows"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k, mistake="zero_loss"), "expected NaN"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k, mistake="all_nan"), "do not divide by a count of 0"),
    ("exercise_6_3", lambda *a, **k: ce_student(*a, **k)[1], "expected a tuple (loss, dlogits)"),
]
