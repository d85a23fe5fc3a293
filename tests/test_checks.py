"""Every exercise check: the right answer passes, plausible wrong answers fail with the right hint,
and an unfinished stub's ExerciseNotDone passes through untouched.

Notebooks 01, 02 and 08 keep their cases here; a later notebook keeps its own in
``tests/check_cases_<module>.py`` (CORRECT, STUDENT_STYLE, WRONG, as below), merged in at the end.
"""

import importlib
from pathlib import Path

import numpy as np
import pytest

from minideeplab.grading import ExerciseNotDone, ExerciseWrong, checks
from minideeplab.scratch import atrous_conv2d_backward_naive, atrous_conv2d_naive, conv_output_size
from minideeplab.scratch import crf
from minideeplab.scratch import receptive as rfm


def stub(*args, **kwargs):
    raise ExerciseNotDone("Exercise N.K: not done")


# ------------------------------------------------------------------ student-style implementations

def rf_student(layers, mistake=None):
    size, jump, start = 1, 1, 0.0
    for k, s, r, p in layers:
        k_eff = r * (k - 1) + 1
        p = {"no_pad": 0, "pad_sign": -p}.get(mistake, p)
        if mistake == "jump_first":
            jump *= s
        size += (k_eff - 1) * (1 if mistake == "no_jump" else jump)
        start += ((k_eff - 1) / 2 - p) * (1 if mistake == "start_no_jump" else jump)
        if mistake != "jump_first":
            jump *= s * r if mistake == "jump_rate" else s
    return rfm.RF(size, jump, start)


def footprint_student(layers, mistake=None):
    offsets, jump = [0], 1
    for k, s, r, _ in layers:
        if mistake == "jump_first":
            jump *= s
        step = r if mistake == "no_jump" else r * jump
        offsets = sorted({o + step * t for o in offsets for t in range(k)})
        if mistake != "jump_first":
            jump *= s
    mask = np.zeros(offsets[-1] - offsets[0] + 1, dtype=bool)
    mask[np.array(offsets) - offsets[0]] = True
    return np.ones_like(mask) if mistake == "dense" else mask


def out_size_student(size, kernel, rate=1, stride=1, padding="same", mistake=None):
    if padding == "same":
        p = (kernel - 1) // 2 if mistake == "pad" else rate * (kernel - 1) // 2
    else:
        p = 0 if padding == "valid" else padding
    n = size + 2 * p - rate * (kernel - 1) - 1
    if mistake == "ceil":
        return -(-n // stride) + 1
    return n // stride if mistake == "plus1" else n // stride + 1


def conv_student(x, weight, bias=None, rate=1, stride=1, padding="same", groups=1, mistake=None):
    """A correct loop conv with one optional, deliberate mistake."""
    N, C, H, W = x.shape
    Cout, cg, kh, kw = weight.shape
    if mistake == "flip":
        weight = weight[:, :, ::-1, ::-1]
    if padding == "same":
        ph, pw = ((kh - 1) // 2, (kw - 1) // 2) if mistake == "pad" else (rate * (kh - 1) // 2, rate * (kw - 1) // 2)
        if mistake == "one_pad":  # one padding computed from kh, used for both axes
            pw = ph
    else:
        ph = pw = 0 if padding == "valid" else padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    Ho = (H + 2 * ph - rate * (kh - 1) - 1) // stride + (0 if mistake == "plus1" else 1)
    Wo = (W + 2 * pw - rate * (kw - 1) - 1) // stride + (0 if mistake == "plus1" else 1)
    out = np.zeros((N, Cout, Ho, Wo), dtype=x.dtype)
    co = Cout // groups
    for o in range(Cout):
        g = o % groups if mistake == "group_mod" else o // co
        for i in range(kh):
            for j in range(kw):
                chans = slice(None) if mistake == "no_groups" else slice(g * cg, (g + 1) * cg)
                patch = xp[:, chans, i * rate:i * rate + stride * (Ho - 1) + 1:stride,
                           j * rate:j * rate + stride * (Wo - 1) + 1:stride]
                out[:, o] += np.einsum("nchw,c->nhw", patch, weight[o, :, i, j])
    if bias is not None and mistake != "bias":
        out += bias[None, :, None, None]
    return out


def backward_student(dout, x, weight, rate=1, stride=1, padding="same", groups=1, mistake=None):
    """A correct loop backward with one optional, deliberate mistake."""
    N, C, H, W = x.shape
    Cout, cg, kh, kw = weight.shape
    if padding == "same":
        ph, pw = rate * (kh - 1) // 2, rate * (kw - 1) // 2
    else:
        ph = pw = 0 if padding == "valid" else padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(weight)
    Ho, Wo = dout.shape[2:]
    co = Cout // groups
    for o in range(Cout):
        g = o // co
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * rate, i * rate + stride * (Ho - 1) + 1, stride)
                cols = slice(j * rate, j * rate + stride * (Wo - 1) + 1, stride)
                chans = slice(None) if mistake == "no_groups" else slice(g * cg, (g + 1) * cg)
                dxp[:, chans, rows, cols] += np.einsum("nhw,c->nchw", dout[:, o], weight[o, :, i, j])
                dw[o, :, i, j] += np.einsum("nhw,nchw->c", dout[:, o], xp[:, g * cg:(g + 1) * cg, rows, cols])
    dx = dxp if mistake == "no_crop" else dxp[:, :, ph:ph + H, pw:pw + W]
    if mistake == "crop_ph":  # cropped with the row padding on both axes
        dx = dxp[:, :, ph:ph + H, ph:ph + W]
    if mistake == "dw_flip":
        dw = dw[:, :, ::-1, ::-1].copy()
    if mistake == "dw_last":  # `=` instead of `+=` over the batch: the last sample wins
        dw = backward_student(dout[-1:], x[-1:], weight, rate, stride, padding, groups)[1]
    db = dout.sum(axis=(2, 3)) if mistake == "db_batch" else dout.sum(axis=(0, 2, 3))
    return dx, dw, db


def backward_pixels_student(dout, x, weight, rate=1, stride=1, padding="same", groups=1, mistake=None):
    """The notebook's loops over output pixels, one optional mistake."""
    N, C, H, W = x.shape
    Cout, Cg, kh, kw = weight.shape
    ph, pw = (rate * (kh - 1) // 2, rate * (kw - 1) // 2) if padding == "same" else (0, 0) if padding == "valid" \
        else (padding, padding)
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxpad, dweight = np.zeros_like(xpad), np.zeros_like(weight)
    Og = Cout // groups
    for g in range(groups):
        ci, co = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for y in range(dout.shape[2]):
            for x_ in range(dout.shape[3]):
                rows = slice(y * stride, y * stride + rate * (kh - 1) + 1, rate)
                cols = slice(x_ * stride, x_ * stride + rate * (kw - 1) + 1, rate)
                share = np.tensordot(dout[:, co, y, x_], weight[co], axes=(1, 0))
                if mistake == "assign":
                    dxpad[:, ci, rows, cols] = share
                else:
                    dxpad[:, ci, rows, cols] += share
                dweight[co] += np.tensordot(dout[:, co, y, x_], xpad[:, ci, rows, cols], axes=(0, 0))
    return dxpad[:, :, ph:ph + H, pw:pw + W], dweight, dout.sum(axis=(0, 2, 3))


def backward_taps_assign(dout, x, weight, rate=1, stride=1, padding="same", groups=1):
    """dx by one strided block per kernel tap, written with `=` (the last tap wins where blocks overlap)."""
    _, dweight, dbias = backward_student(dout, x, weight, rate, stride, padding, groups)
    N, C, H, W = x.shape
    Cout, Cg, kh, kw = weight.shape
    ph, pw = (rate * (kh - 1) // 2, rate * (kw - 1) // 2) if padding == "same" else (0, 0) if padding == "valid" \
        else (padding, padding)
    dxpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), x.dtype)
    Ho, Wo, Og = dout.shape[2], dout.shape[3], Cout // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                dxpad[:, g * Cg:(g + 1) * Cg, i * rate:i * rate + stride * (Ho - 1) + 1:stride,
                      j * rate:j * rate + stride * (Wo - 1) + 1:stride] = np.einsum(
                    "nohw,oc->nchw", dout[:, g * Og:(g + 1) * Og], weight[g * Og:(g + 1) * Og, :, i, j])
    return dxpad[:, :, ph:ph + H, pw:pw + W], dweight, dbias


def kernel_student(image, xy_std, rgb_std, mistake=None):
    """The appearance kernel as a student writes it (x and y in either order), one optional mistake."""
    H, W = image.shape[:2]
    rows, cols = np.divmod(np.arange(H * W), W)
    pos = np.stack([rows, cols] if mistake == "yx" else [cols, rows], axis=1).astype(np.float64)
    rgb = image.reshape(-1, 3)
    if mistake != "uint8":
        rgb = rgb.astype(np.float64)
    d_pos = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    d_rgb = ((rgb[:, None] - rgb[None]) ** 2).sum(-1)
    two = 1.0 if mistake == "half" else 2.0
    vx, vc = (xy_std, rgb_std) if mistake == "std" else (xy_std ** 2, rgb_std ** 2)
    k = np.exp(-d_pos / (two * vx) - d_rgb / (two * vc))
    if mistake == "diag":
        np.fill_diagonal(k, 0.0)
    return k


def update_student(q, unary, kernels, weights, mistake=None):
    """A Potts mean-field update as a student writes it, one optional mistake."""
    message = np.zeros_like(q)
    for w, k in zip(weights, kernels):
        message += w * (q @ (k if mistake == "transpose" else k.T))
    if mistake == "in_place":
        unary *= -1
        energy = unary + message
    else:
        energy = {"unary_sign": unary + message, "subtract": -unary - message}.get(mistake, -unary + message)
    axis = 1 if mistake == "pixels" else 0
    e = np.exp(energy - energy.max(axis=axis, keepdims=True))
    return e if mistake == "no_norm" else e / e.sum(axis=axis, keepdims=True)


def blur_student(lattice, values, mistake=None):
    """The lattice blur as a student writes it, one optional mistake."""
    nb = lattice.neighbours
    passes = {"first_only": 1, "d_dirs": lattice.dim}.get(mistake, nb.shape[0])
    v = values if mistake == "augmented" else values.copy()
    for j in range(passes):
        left, right = nb[j, :, 0], nb[j, :, 1]
        if mistake == "inplace":
            for m in range(1, v.shape[0]):
                v[m] += 0.5 * (v[left[m]] + v[right[m]])
        elif mistake == "augmented":  # right values, but the caller's array is changed
            v += 0.5 * (v[left] + v[right])
        elif mistake == "no_half":
            v = v + v[left] + v[right]
        elif mistake == "float64":
            new = np.zeros(v.shape)
            new[:] = v + 0.5 * (v[left] + v[right])
            v = new
        else:
            v = v + 0.5 * (v[left] + v[right])
    return v


# ------------------------------------------------------------------ the table of cases

CORRECT = {
    "exercise_1_1": rfm.effective_kernel_size,
    "exercise_1_2": lambda layers: rfm.receptive_field(layers),
    "exercise_1_3": lambda layers: rfm.footprint(layers) > 0,
    "exercise_2_1": conv_output_size,
    "exercise_2_2": atrous_conv2d_naive,
    "exercise_2_3": atrous_conv2d_backward_naive,
    "exercise_8_1": lambda image, xy_std, rgb_std: crf.gaussian_kernel(crf.pixel_features(image, xy_std, rgb_std)),
    "exercise_8_2": crf.mean_field_update,
    "exercise_8_3": crf.lattice_blur,
}
STUDENT_STYLE = {"exercise_2_2": conv_student, "exercise_2_3": backward_student,
                 "exercise_8_1": lambda *a: kernel_student(*a, mistake="yx"),  # x/y swapped: same distances
                 "exercise_8_2": update_student, "exercise_8_3": blur_student}

WRONG = [  # (check, wrong function, text expected in the message or None)
    ("exercise_1_1", lambda k, r: k * r, "kernel*rate"),
    ("exercise_1_1", lambda k, r: r * (k - 1), "forgets the first tap"),
    ("exercise_1_1", lambda k, r: k + r - 1, "adds the rate once"),
    ("exercise_1_1", lambda k, r: None, "returned None"),
    ("exercise_1_2", lambda L: rf_student(L, "no_jump"), "size += (k_eff - 1) * jump"),
    ("exercise_1_2", lambda L: rf_student(L, "jump_rate"), "product of the strides"),
    ("exercise_1_2", lambda L: rf_student(L, "jump_first"), "update size and start first"),
    ("exercise_1_2", lambda L: rf_student(L, "start_no_jump"), "times the current jump"),
    ("exercise_1_2", lambda L: rf_student(L, "no_pad"), "start ignores the padding"),
    ("exercise_1_2", lambda L: rf_student(L, "pad_sign"), "the padding moves start the wrong way"),
    ("exercise_1_2", lambda L: rfm.receptive_field(L).first, "expected RF(size, jump, start)"),
    ("exercise_1_3", lambda L: footprint_student(L, "dense"), "leave holes"),
    ("exercise_1_3", lambda L: footprint_student(L, "no_jump"), "rate * jump"),
    ("exercise_1_3", lambda L: footprint_student(L, "jump_first"), "multiply jump by the stride after placing"),
    ("exercise_2_1", lambda *a: out_size_student(*a, mistake="pad"), "p = rate*(kernel-1)//2"),
    ("exercise_2_1", lambda *a: out_size_student(*a, mistake="plus1"), "off by one"),
    ("exercise_2_1", lambda *a: out_size_student(*a, mistake="ceil"), "round down"),
    ("exercise_2_2", lambda *a, **k: conv_student(*a, **k, mistake="flip"), "flipped"),
    ("exercise_2_2", lambda *a, **k: conv_student(*a, **k, mistake="pad"), "must grow with the rate"),
    ("exercise_2_2", lambda *a, **k: conv_student(*a, **k, mistake="plus1"), "one output row and column short"),
    ("exercise_2_2", lambda *a, **k: conv_student(*a, **k, mistake="bias"), "bias is missing"),
    ("exercise_2_2", lambda x, w, b=None, **k: conv_student(x.astype(np.float64), w.astype(np.float64), b, **k),
     "dtype float64, expected float32"),
    ("exercise_2_3", lambda *a, **k: backward_student(*a, **k, mistake="no_crop"), "crop the padding"),
    ("exercise_2_3", lambda *a, **k: backward_student(*a, **k, mistake="dw_flip"), "dweight is flipped"),
    ("exercise_2_3", lambda *a, **k: backward_student(*a, **k, mistake="db_batch"), "sum over the batch"),
    ("exercise_2_3", lambda *a, **k: backward_student(*a, **k, mistake="dw_last"), "matches sample -1"),
    ("exercise_2_3", lambda *a, **k: backward_student(*a, **k, mistake="crop_ph"), "values differ"),
    ("exercise_2_3", lambda *a, **k: backward_pixels_student(*a, **k, mistake="assign"),
     "written with `=` where the windows overlap (pixels loop)"),
    ("exercise_2_3", backward_taps_assign, "written with `=` where the windows overlap (taps loop)"),
    ("exercise_2_2", lambda *a, **k: conv_student(*a, **k, mistake="one_pad"), "shape"),
    ("exercise_2_2", lambda *a, **k: conv_student(*a, **k, mistake="no_groups"),
     "this case has groups=2: each group of C/groups = 2 input channels"),
    ("exercise_2_2", lambda *a, **k: conv_student(*a, **k, mistake="group_mod"), "group o % groups"),
    ("exercise_2_3", lambda *a, **k: backward_student(*a, **k, mistake="no_groups"), "this case has groups=2"),
    ("exercise_2_3", lambda *a, **k: backward_student(*a, **k)[:2], "expected a tuple (dx, dweight, dbias)"),
    ("exercise_8_1", lambda *a: kernel_student(*a, mistake="uint8"), "wraps around to 246"),
    ("exercise_8_1", lambda *a: kernel_student(*a, mistake="half"), "factor 1/2 is missing"),
    ("exercise_8_1", lambda *a: kernel_student(*a, mistake="std"), "2 * std**2"),
    ("exercise_8_1", lambda *a: kernel_student(*a, mistake="diag"), "includes the pixel"),
    ("exercise_8_1", lambda *a: kernel_student(*a).astype(np.float32)[:, :-1], "shape"),
    ("exercise_8_2", lambda *a: update_student(*a, mistake="unary_sign"), "wrong sign"),
    ("exercise_8_2", lambda *a: update_student(*a, mistake="subtract"), "message is subtracted"),
    ("exercise_8_2", lambda *a: update_student(*a, mistake="pixels"), "over the pixels"),
    ("exercise_8_2", lambda *a: update_student(*a, mistake="no_norm"), "not normalised"),
    ("exercise_8_2", lambda *a: update_student(*a, mistake="transpose"), "q @ K.T"),
    ("exercise_8_2", lambda *a: update_student(*a, mistake="in_place"), "changed its argument `unary`"),
    ("exercise_8_3", lambda *a: blur_student(*a, mistake="inplace"), "blur was done in place"),
    ("exercise_8_3", lambda *a: blur_student(*a, mistake="no_half"), "[1/2, 1, 1/2]"),
    ("exercise_8_3", lambda *a: blur_student(*a, mistake="first_only"), "only the first direction"),
    ("exercise_8_3", lambda *a: blur_student(*a, mistake="d_dirs"), "d+1 directions"),
    ("exercise_8_3", lambda *a: blur_student(*a, mistake="augmented"), "changed the array it was given"),
    ("exercise_8_3", lambda *a: blur_student(*a, mistake="float64"), "dtype float64, expected float32"),
]


for _path in sorted(Path(__file__).parent.glob("check_cases_*.py")):
    _cases = importlib.import_module(_path.stem)
    assert not set(_cases.CORRECT) & set(CORRECT), f"{_path.name} repeats an exercise"
    CORRECT.update(_cases.CORRECT)
    STUDENT_STYLE.update(getattr(_cases, "STUDENT_STYLE", {}))
    WRONG += _cases.WRONG


def test_every_exercise_has_cases():
    exercises = {n for n in dir(checks) if n.startswith("exercise_")}
    assert exercises == set(CORRECT)
    for name in exercises:
        assert sum(w[0] == name for w in WRONG) >= 2, f"{name} needs at least two wrong answers"


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_solution_passes(name, capsys):
    assert getattr(checks, name)(CORRECT[name]) is None  # nothing to echo below a notebook cell
    out = capsys.readouterr().out
    ex = name.removeprefix("exercise_").replace("_", ".")
    assert out.startswith(f"Exercise {ex} passed:") and out.count("\n") == 1


@pytest.mark.parametrize("name", sorted(STUDENT_STYLE))
def test_student_style_solution_passes(name):
    getattr(checks, name)(STUDENT_STYLE[name])


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_stub_propagates_not_done(name):
    with pytest.raises(ExerciseNotDone):
        getattr(checks, name)(stub)


@pytest.mark.parametrize("name, wrong, text", WRONG, ids=[f"{w[0]}-{w[2][:30]}" for w in WRONG])
def test_wrong_answer_rejected_with_hint(name, wrong, text):
    with pytest.raises(ExerciseWrong) as info:
        getattr(checks, name)(wrong)
    msg = str(info.value)
    ex = name.removeprefix("exercise_").replace("_", ".")
    assert msg.startswith(f"Exercise {ex}"), msg
    assert text in msg, msg


def test_conv_failure_names_the_case_worst_error_and_tolerance():
    with pytest.raises(ExerciseWrong) as info:
        checks.exercise_2_2(lambda *a, **k: conv_student(*a, **k, mistake="flip"))
    msg = str(info.value)
    assert "atrous_conv2d_naive(x (2, 3, 9, 11) float64" in msg
    assert "worst |error|" in msg and "at index (" in msg and "tolerance" in msg


def test_output_size_failure_names_the_first_wrong_case():
    with pytest.raises(ExerciseWrong) as info:
        checks.exercise_2_1(lambda *a: out_size_student(*a, mistake="pad"))
    assert "first wrong case: conv_output_size(size=" in str(info.value)


def test_a_crash_names_the_case_and_keeps_the_students_traceback():
    def no_groups(x, weight, bias=None, rate=1, stride=1, padding="same", groups=1):
        return conv_student(x, weight, bias, rate, stride, padding, groups, mistake="no_groups")

    with pytest.raises(ExerciseWrong) as info:
        checks.exercise_2_2(no_groups)
    msg = str(info.value)
    assert msg.startswith("Exercise 2.2: no_groups(x=array (2, 4, 8, 8) float32, weight=array (6, 2, 3, 3) float32, "
                          "bias=array (6,) float32, rate=2, stride=1, padding='same', groups=2) raised ")
    cause = info.value.student_error
    assert cause is info.value.__cause__
    assert cause.__traceback__.tb_frame.f_code.co_name == "no_groups"  # starts in the student's code
    assert "\n  at line " in msg and "of conv_student: out[:, o] += np.einsum(" in msg


def test_a_function_that_is_not_callable_is_named():
    with pytest.raises(ExerciseWrong, match="Exercise 2.1: expected the function conv_output_size, got 3"):
        checks.exercise_2_1(3)


def test_every_check_names_a_crash():
    """Every check goes through exercise_check, so a crash in the student's function names its case: also the
    checks of notebooks added later."""
    for name in (n for n in dir(checks) if n.startswith("exercise_")):
        assert getattr(getattr(checks, name), "exercise", None) == name.removeprefix("exercise_").replace("_", "."), \
            f"{name} is not decorated with @exercise_check"
