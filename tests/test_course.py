"""The real course end to end: the solutions pass every check, the student course has every
exercise open, and both are what the grader reports (exit codes included)."""

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minideeplab.grading.build import exercises

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))


_GRADERS = {}  # folder -> the Popen of `minideeplab grade` over its notebooks, started once per session


def start_graders():
    """Start grading solutions/ and course/ (idempotent). conftest.py calls this as soon as the session's tests
    are collected, so that the graders' kernels (mostly one-threaded Python and numba) run beside the rest of
    the suite, which leaves the second core idle most of the time; the ``graded`` fixture then waits for them."""
    for folder in ("solutions", "course"):
        if folder not in _GRADERS:
            _GRADERS[folder] = subprocess.Popen([sys.executable, "-m", "minideeplab", "grade",
                                                 *(str(ROOT / folder / name) for name in NOTEBOOKS)],
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def stop_graders():
    """Kill graders still running (a session that stopped before test_course.py ran: -x, Ctrl-C)."""
    for proc in _GRADERS.values():
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def graded():
    """{folder: CompletedProcess of `minideeplab grade` over its notebooks}, solutions/ and course/.

    This is where every notebook runs in `make test` (in a fresh kernel, any raising cell fails).
    """
    start_graders()
    results = {}
    try:
        for folder, proc in _GRADERS.items():
            out, err = proc.communicate(timeout=1200)
            results[folder] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        stop_graders()
    return results


def all_exercise_ids():
    return [e["id"] for name in NOTEBOOKS for e in exercises(nbformat.read(ROOT / "solutions" / name, 4))]


def test_every_notebook_has_graded_exercises():
    assert NOTEBOOKS[:2] == ["01_receptive_fields.ipynb", "02_atrous_convolution.ipynb"]
    for name in NOTEBOOKS:
        found = exercises(nbformat.read(ROOT / "solutions" / name, 4))
        assert len(found) >= 2 and all(e["check"] is not None for e in found), name


def test_solutions_pass_every_exercise(graded):
    result = graded["solutions"]
    ids = all_exercise_ids()
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(re.findall(r"\bpassed\b", result.stdout)) >= len(ids)
    assert f"{len(ids)} of {len(ids)} exercises passed" in result.stdout


def test_course_has_every_exercise_not_done(graded):
    result = graded["course"]
    ids = all_exercise_ids()
    assert result.returncode == 1, result.stdout + result.stderr
    for ex in ids:
        assert re.search(rf"{re.escape(ex)}\b.*not done", result.stdout), f"exercise {ex}:\n{result.stdout}"
    assert f"0 of {len(ids)} exercises passed" in result.stdout
    assert "error outside the exercises" not in result.stdout, result.stdout
