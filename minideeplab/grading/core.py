"""What every exercise check shares: the two exceptions and a teacher-style array comparison.

A check compares a student's answer with the reference in a fixed order, shape first,
then dtype and NaN/inf, then values, and stops at the first difference with a message
that says what was compared, the worst error and where, the tolerance, and a hint when
the answer matches a known mistake.
"""

from __future__ import annotations

import numpy as np


class ExerciseNotDone(NotImplementedError):
    """Raised by an exercise stub that the student has not replaced yet.

    The message starts with the exercise id, e.g. ``"Exercise 2.1: implement ..."``.
    """


class ExerciseWrong(AssertionError):
    """Raised by a check when the answer disagrees with the reference.

    The first line names the exercise and what differs; later lines give the details.
    """


def _fmt_index(idx) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ")"


def _matches(got, wrong, rtol, atol) -> bool:
    wrong = np.asarray(wrong)
    return got.shape == wrong.shape and bool(np.allclose(got, wrong, rtol=rtol, atol=atol, equal_nan=False))


def compare_arrays(exercise: str, what: str, got, expected, *, rtol: float, atol: float = 0.0,
                   known_mistakes: dict | None = None, check_dtype: bool = True) -> float:
    """Compare ``got`` with ``expected``; return the worst relative error, or raise ExerciseWrong.

    exercise: id such as ``"2.1"``. what: a short description of the case, e.g.
    ``"atrous_conv2d_naive(x (2, 3, 9, 11) float64, rate=2, stride=2)"``.
    Values pass when ``|got - expected| <= atol + rtol * |expected|`` everywhere.
    known_mistakes: ``{hint: wrong_answer_array}``; when ``got`` matches one of them (same
    shape, allclose at the same tolerance) the hint is added to the message.
    """
    head = f"Exercise {exercise}: {what}"
    expected = np.asarray(expected)
    if not isinstance(got, np.ndarray):
        if got is None:
            raise ExerciseWrong(f"{head}: got None, expected an array of shape {expected.shape}. "
                                "Did the function forget to `return` its result?")
        try:
            got = np.asarray(got)
        except Exception:  # pragma: no cover - exotic objects
            raise ExerciseWrong(f"{head}: got a {type(got).__name__}, expected a NumPy array") from None
        if got.dtype == object:
            raise ExerciseWrong(f"{head}: got a {type(got).__name__} that is not an array of numbers")
    hint = _hint(got, known_mistakes, rtol, atol)

    if got.shape != expected.shape:
        raise ExerciseWrong(f"{head}: shape {got.shape}, expected {expected.shape}.{hint}")
    if check_dtype and got.dtype != expected.dtype:
        raise ExerciseWrong(f"{head}: dtype {got.dtype}, expected {expected.dtype} "
                            f"(the output dtype should follow the input's).{hint}")
    bad = ~np.isfinite(got)
    if bad.any() and not (~np.isfinite(expected)).any():
        idx = np.unravel_index(np.argmax(bad), got.shape)
        raise ExerciseWrong(f"{head}: {int(bad.sum())} NaN or inf values, the first at index "
                            f"{_fmt_index(idx)} (the reference has none).{hint}")

    err = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    allowed = atol + rtol * np.abs(expected.astype(np.float64))
    excess = err - allowed
    worst = np.unravel_index(np.argmax(excess), err.shape) if err.size else ()
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    rel = float(err.max() / scale) if err.size and scale > 0 else float(err.max()) if err.size else 0.0
    if err.size and excess[worst] > 0:
        n_bad = int((excess > 0).sum())
        raise ExerciseWrong(
            f"{head}: values differ from the reference at {n_bad} of {err.size} entries.\n"
            f"  worst |error| {err[worst]:.3g} at index {_fmt_index(worst)}: "
            f"got {float(got[worst]):.6g}, expected {float(expected[worst]):.6g}\n"
            f"  tolerance: |error| <= {atol:g} + {rtol:g} * |expected|{hint}")
    return rel


def _hint(got, known_mistakes, rtol, atol) -> str:
    for text, wrong in (known_mistakes or {}).items():
        try:
            if _matches(got, wrong, rtol, atol):
                return f"\n  Hint: {text}"
        except Exception:  # a hint must never mask the real report
            continue
    return ""


def passed(exercise: str, what: str, worst: float, tolerance: str) -> str:
    """Print and return the one-line pass message of an exercise check."""
    line = f"Exercise {exercise} passed: {what}; worst relative error {worst:.2e} (tolerance {tolerance})."
    print(line)
    return line
