"""pytest hooks for the notebooks (nbval, ``--nbval-lax``).

In a student notebook (a folder named ``course``) an exercise or check cell that fails with
``ExerciseNotDone`` is an expected failure, reported as xfail "Exercise N.K not done yet". Any
other error, an ExerciseNotDone raised by a narrative cell, and every error in solutions/ stay failures.
"""

import re

import pytest

from minideeplab.grading.build import check_header, exercise_header

_EXERCISE_ID = re.compile(r"Exercise (\d+\.\d+)\b")


def _not_done_reason(item) -> str | None:
    """The xfail reason when ``item`` is a course exercise/check cell that raised ExerciseNotDone."""
    cell, outputs = getattr(item, "cell", None), getattr(item, "test_outputs", None)
    if cell is None or not outputs or item.path.parent.name != "course":
        return None
    header = exercise_header(cell.source)
    own_id = header[0] if header else check_header(cell.source)
    errors = [out for out in outputs if out.get("output_type") == "error"]
    if own_id is None or not errors or errors[-1].get("ename") != "ExerciseNotDone":
        return None
    m = _EXERCISE_ID.match(str(errors[-1].get("evalue", "")))  # the stub names its exercise
    return f"Exercise {m.group(1) if m else own_id} not done yet"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and call.excinfo is not None:
        reason = _not_done_reason(item)
        if reason:
            report.outcome = "skipped"
            report.wasxfail = reason
