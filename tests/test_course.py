"""The real course end to end: the solutions pass every check, the student course has every
exercise open, and both are what the grader reports (exit codes included)."""

import re
from pathlib import Path

import nbformat
import pytest

from minideeplab.grading.build import exercises

from helpers import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graded(graders_results):
    """{folder: CompletedProcess of `minideeplab grade` over its notebooks}, solutions/ and course/.

    This is where every notebook runs in `make test` (in a fresh kernel, any raising cell fails). The graders
    start when the tests are collected and run beside the rest of the suite (conftest.py); this waits for them.
    """
    return graders_results


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
