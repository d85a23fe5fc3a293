"""The conftest.py hook: in course/ a stub's ExerciseNotDone is xfail "not done yet"; every other error fails."""

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell as code, new_notebook

from minideeplab.grading.build import build_course

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_not_done_is_xfail_in_course_only(tmp_path):
    nb = new_notebook()
    nb.cells = [code("from minideeplab.grading import ExerciseNotDone"),
                code("# Exercise 3.1: double\ndef double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n"
                     "    ### END SOLUTION"),
                code("# Check 3.1\nassert double(2) == 4\nprint('Exercise 3.1 passed')"),
                code("double(3)  # narrative cells must not call a student's function"),
                code("raise ValueError('narrative bug')")]
    (tmp_path / "src").mkdir()
    nbformat.write(nb, tmp_path / "src" / "n.ipynb")
    assert build_course(tmp_path / "src", tmp_path / "course") == 0
    (tmp_path / "solutions").mkdir()  # a stub left in a solution is a real failure
    shutil.copy(tmp_path / "course" / "n.ipynb", tmp_path / "solutions" / "n.ipynb")
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # keep the repository's addopts out of this run

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
         "--junitxml", str(tmp_path / "report.xml"), "course", "solutions"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr

    outcomes = {"course": [], "solutions": []}
    for case in ET.parse(tmp_path / "report.xml").iter("testcase"):
        folder = "course" if case.get("classname", "").startswith("course") else "solutions"
        skipped, failure = case.find("skipped"), case.find("failure")
        if skipped is not None:
            outcomes[folder].append(("xfail" if skipped.get("type") == "pytest.xfail" else "skip",
                                     skipped.get("message")))
        elif failure is not None:
            text = ANSI.sub("", (failure.get("message") or "") + (failure.text or ""))
            outcomes[folder].append(("failed", next(
                (e for e in ("ExerciseNotDone", "ValueError") if f"{e}: " in text or f"{e}(" in text), text)))
        else:
            outcomes[folder].append(("passed", None))
    assert sorted(outcomes["course"]) == sorted([
        ("passed", None), ("passed", None), ("xfail", "Exercise 3.1 not done yet"),
        ("failed", "ExerciseNotDone"), ("failed", "ValueError")]), proc.stdout
    assert sorted(outcomes["solutions"]) == sorted([
        ("passed", None), ("passed", None), ("failed", "ExerciseNotDone"),
        ("failed", "ExerciseNotDone"), ("failed", "ValueError")]), proc.stdout
    assert "1 xfailed" in proc.stdout.strip().splitlines()[-1]
