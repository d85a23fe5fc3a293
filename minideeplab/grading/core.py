"""What every exercise check shares: the two exceptions and a teacher-style array comparison.

A check compares a student's answer with the reference in a fixed order, shape first,
then dtype and NaN/inf, then values, and stops at the first difference with a message
that says what was compared, the worst error and where, the tolerance, and a hint when
the answer matches a known mistake.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import sysconfig
import traceback

import numpy as np


def _render(exc) -> list[str]:
    """What IPython shows for an exercise exception: its message, not the checker's frames; when the student's
    function raised, the message (the case) and then the student's traceback, from the student's code on."""
    lines = [f"{type(exc).__name__}: {exc}"]
    error = getattr(exc, "student_error", None)
    if error is not None and error.__traceback__ is not None:
        from IPython import get_ipython  # called by IPython's showtraceback

        shell = get_ipython()
        lines += ["", "The traceback of your function:"]
        lines += (shell.InteractiveTB.structured_traceback(type(error), error, error.__traceback__) if shell else
                  "".join(traceback.format_exception(error)).rstrip("\n").split("\n"))
    return lines


class ExerciseNotDone(NotImplementedError):
    """Raised by an exercise stub that the student has not replaced yet.

    The message starts with the exercise id, e.g. ``"Exercise 2.1: implement ..."``.
    """

    _render_traceback_ = _render  # IPython's hook: the message only


class ExerciseWrong(AssertionError):
    """Raised by a check when the answer disagrees with the reference.

    The first line names the exercise and what differs; later lines give the details. ``student_error``:
    the exception the student's function raised, when that is what went wrong.
    """

    student_error: BaseException | None = None
    _render_traceback_ = _render


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


# ---------------------------------------------------------------- calling the student's function

_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_NOT_STUDENT = tuple(os.path.realpath(p) + os.sep for p in {
    sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # python, this venv's packages, minideeplab
    # and any other folder of installed packages on the path (a user site, a venv layered on another one)
    *(p for p in sys.path if os.path.basename(os.path.normpath(p)) in ("site-packages", "dist-packages"))})


def _short(v) -> str:
    """A value as a case names it: arrays by shape and dtype, long containers by their length."""
    if isinstance(v, np.ndarray):
        return f"array {v.shape} {v.dtype}"
    if type(v).__module__.startswith("torch") and hasattr(v, "shape") and hasattr(v, "dtype"):
        return f"tensor {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}"
    if isinstance(v, dict) and len(v) > 4:
        return f"dict of {len(v)} entries"
    if callable(v) and hasattr(v, "__name__"):
        return v.__name__
    text = repr(v)
    if len(text) > 100:
        return f"{type(v).__name__} of {len(v)}" if hasattr(v, "__len__") else text[:97] + "..."
    return text


def describe_call(name: str, fn, args, kwargs) -> str:
    """``name(x=array (2, 3) float64, rate=2)``: the call with the student's own parameter names."""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):  # a call that does not fit the signature says so when it is made
        return f"{name}({', '.join([*map(_short, args), *(f'{k}={_short(v)}' for k, v in kwargs.items())])})"
    parts = []
    for key, v in bound.arguments.items():
        kind = bound.signature.parameters[key].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            parts += map(_short, v)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            parts += [f"{k}={_short(a)}" for k, a in v.items()]
        else:
            parts.append(f"{key}={_short(v)}")
    return f"{name}({', '.join(parts)})"


def _student_line(tb) -> str:
    """'line N of fn: source' of the innermost frame of the student's own code (not numpy's, not python's)."""
    frames = [f for f in traceback.extract_tb(tb) if not os.path.realpath(f.filename).startswith(_NOT_STUDENT)]
    if not frames:
        return ""
    f = frames[-1]
    line = (f.line or "").strip()
    return f"\n  at line {f.lineno} of {f.name}" + (f": {line}" if line else "")


def student_function(fn, exercise: str, name: str):
    """``fn`` wrapped so that an exception it raises becomes ExerciseWrong naming the call (its arguments) and
    the line that raised, with the exception as its cause; its traceback starts in the student's code.
    ExerciseNotDone (an unfinished stub) and ExerciseWrong pass through."""
    if not callable(fn):
        raise ExerciseWrong(f"Exercise {exercise}: expected the function {name}, got {_short(fn)} "
                            f"({type(fn).__name__})")
    own = getattr(fn, "__name__", "")
    label = own if _IDENTIFIER.fullmatch(own or "") else name

    @functools.wraps(fn)
    def call(*args, **kwargs):
        __tracebackhide__ = True  # noqa: F841  pytest and IPython leave this frame out
        try:
            return fn(*args, **kwargs)
        except (ExerciseNotDone, ExerciseWrong):
            raise
        except Exception as e:
            e = e.with_traceback(e.__traceback__.tb_next)  # from the student's first frame on
            wrong = ExerciseWrong(f"Exercise {exercise}: {describe_call(label, fn, args, kwargs)} raised "
                                  f"{type(e).__name__}: {e}{_student_line(e.__traceback__)}")
            wrong.student_error = e
            raise wrong from e

    return call


def crash_hint(wrong: ExerciseWrong, hint: str) -> ExerciseWrong:
    """``wrong`` (a crash of the student's function, from `student_function`) with a hint on its likely cause;
    raise it ``from wrong.student_error``."""
    hinted = ExerciseWrong(f"{wrong}\n  Hint: {hint}")
    hinted.student_error = wrong.student_error
    return hinted


def exercise_check(exercise: str):
    """Decorator of a check ``exercise_N_K(student_fn)``: the student's function goes through
    `student_function`, named by the check's parameter unless it has a name of its own."""
    def wrap(check):
        name = next(iter(inspect.signature(check).parameters))

        @functools.wraps(check)
        def run(fn):
            __tracebackhide__ = True  # noqa: F841
            return check(student_function(fn, exercise, name))

        run.exercise = exercise
        return run
    return wrap


def passed(exercise: str, what: str, worst: float, tolerance: str) -> str:
    """Print and return the one-line pass message of an exercise check."""
    line = f"Exercise {exercise} passed: {what}; worst relative error {worst:.2e} (tolerance {tolerance})."
    print(line)
    return line
