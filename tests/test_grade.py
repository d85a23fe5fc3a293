"""minideeplab grade: runs notebooks in a fresh kernel, one row per exercise, never edits the file; for
instructors a JSON document or a CSV gradebook over a folder of submissions."""

import contextlib
import csv
import io
import json
import re

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell as code, new_notebook

from minideeplab.cli import main
from minideeplab.grading.grade import grade_notebooks

SETUP = "from minideeplab.grading import ExerciseNotDone, ExerciseWrong\nfrom pathlib import Path"


def notebook(*sources):
    nb = new_notebook()
    nb.cells = [code(SETUP), *map(code, sources)]
    return nb


MIXED = notebook(
    "# Exercise 1.1: read the data file\ndef read():\n    return Path('data.txt').read_text()",  # cwd = notebook folder
    "# Check 1.1\nassert read() == 'hello'\nprint('Exercise 1.1 passed: read() works')",
    "# Exercise 1.2: triple\ndef triple(x):\n    return 2 * x",
    "# Check 1.2\nif triple(2) != 6:\n"
    "    raise ExerciseWrong(f'Exercise 1.2: triple(2) gave {triple(2)}, expected 6\\nsecond line')\n"
    "print('Exercise 1.2 passed')",
    "# Exercise 1.3: square\ndef square(x):\n    # YOUR CODE HERE\n    raise ExerciseNotDone('Exercise 1.3: square')",
    "# Check 1.3\nsquare(3)\nprint('Exercise 1.3 passed')",
    "# Exercise 1.4: a typo\ndef f(:\n    pass",
    "# Check 1.4\nprint('Exercise 1.4 passed')",
    "# Exercise 1.5: silent check\nx = 1",
    "# Check 1.5\nx",
    "undefined_name  # a narrative cell that fails",
    "# Exercise 1.6: renamed\ndef cubed(x):\n    return x ** 3",  # the check asks for cube: never defined
    "# Check 1.6\nraise ExerciseNotDone('Exercise 1.6 is not done yet: `cube` is not defined. Run the cell')",
)
HANGS = notebook("# Exercise 1.1: slow\nimport time", "# Check 1.1\ntime.sleep(60)\nprint('Exercise 1.1 passed')")


def submission(double, square, check_2=""):
    """A student's copy of a two-exercise notebook: the bodies of double(x) and square(x) as written."""
    return notebook(
        f"# Exercise 1.1: double\ndef double(x):\n    {double}",
        "# Check 1.1\nassert double(3) == 6\nprint('Exercise 1.1 passed')",
        f"# Exercise 1.2: square\ndef square(x):\n    {square}",
        f"# Check 1.2\n{check_2}if square(3) != 9:\n"
        "    raise ExerciseWrong(f'Exercise 1.2: square(3) gave {square(3)}, expected 9\\nHint: x * x, not x + x')\n"
        "print('Exercise 1.2 passed')",
        "print('done')  # after the exercises")


# A folder of submissions as an instructor gets it: one complete, one partly wrong, one whose kernel dies
# (in check 1.2, after 1.1 passed), one that hangs in its first check.
SUBMISSIONS = {
    "ada": submission("return 2 * x", "return x ** 2"),
    "bob": submission("return x + x", "return x + x"),
    "cy": submission("return 2 * x", "return x * x", check_2="import os\nos._exit(1)\n"),
    "dee": notebook("# Exercise 1.1: slow\nimport time", "# Check 1.1\ntime.sleep(60)\nprint('Exercise 1.1 passed')",
                    "# Exercise 1.2: after\nz = 1", "# Check 1.2\nprint('Exercise 1.2 passed')"),
}


def grade(paths, **kw):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = grade_notebooks(paths, **kw)
    return code, out.getvalue(), err.getvalue()


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["grade", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def submissions(tmp_path_factory):
    """submissions/NAME/lab.ipynb for each of SUBMISSIONS: {name: path}."""
    folder = tmp_path_factory.mktemp("submissions")
    paths = {}
    for name, nb in SUBMISSIONS.items():
        (folder / name).mkdir()
        paths[name] = folder / name / "lab.ipynb"
        nbformat.write(nb, paths[name])
    return paths


@pytest.fixture(scope="module")
def graded_json(submissions):
    """`minideeplab grade --json --timeout 2` over the whole folder: (code, the parsed document, stderr)."""
    code, out, err = cli("--json", "--timeout", 2, *submissions.values())
    return code, json.loads(out), err


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Each fixture notebook graded once: {name: (path, bytes before, mtime before, (code, out, err))}."""
    folder = tmp_path_factory.mktemp("nbs")
    (folder / "data.txt").write_text("hello")
    results = {}
    for name, nb, kw in [("mixed", MIXED, {})]:
        path = folder / f"{name}.ipynb"
        nbformat.write(nb, path)
        before = (path.read_bytes(), path.stat().st_mtime_ns)
        results[name] = (path, *before, grade([path], **kw))
    return results


def rows(out):
    """{exercise: (status, reason)} parsed from the table."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"\S+\.ipynb\s+(\d+\.\d+)\s+.*?\s(passed|not done|wrong|not run)\b\s*(.*)$", line)
        if m:
            found[m.group(1)] = (m.group(2), m.group(3))
    return found


def test_each_exercise_gets_its_status_and_reason(graded):
    code, out, _ = graded["mixed"][3]
    assert code == 1
    assert rows(out) == {
        "1.1": ("passed", ""),
        "1.2": ("wrong", "Exercise 1.2: triple(2) gave 4, expected 6"),
        "1.3": ("not done", ""),
        "1.4": ("wrong", rows(out)["1.4"][1]),
        "1.5": ("wrong", "the check printed no 'Exercise 1.5 passed' line"),
        "1.6": ("not done", "`cube` is not defined. Run the cell"),  # grading.kernel's message, said once
    }, out
    assert rows(out)["1.4"][1].startswith("SyntaxError: ")
    assert re.search(r"mixed\.ipynb\s+1\.1\s+read the data file\s+passed", out)
    assert re.search(r"mixed\.ipynb, cell 12 \('undefined_name.*'\): NameError: name 'undefined_name'", out), out
    assert out.rstrip().endswith("1 of 6 exercises passed; 1 other cell(s) raised an error")


def test_a_wrong_exercise_shows_the_checks_whole_message_under_the_table(graded):
    """The table keeps the first line; the details and the hint a check cell would show follow it."""
    code, out, _ = graded["mixed"][3]
    table_end = out.index("1.5")
    whole = out.index("Exercise 1.2 (")
    assert whole > table_end, out
    assert re.search(r"Exercise 1\.2 \(\S+mixed\.ipynb\), the check's whole message:\n"
                     r"    Exercise 1\.2: triple\(2\) gave 4, expected 6\n    second line\n", out), out
    assert "Exercise 1.1 (" not in out and "Exercise 1.5 (" not in out  # one-line reasons stay in the table


def test_grading_never_modifies_the_notebook(graded, submissions, graded_json):
    for path, data, mtime, _ in graded.values():
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    for name, path in submissions.items():
        assert nbformat.read(path, as_version=4) == SUBMISSIONS[name]


def statuses(doc):
    """{submission name: {exercise: (status, reason)}} of a --json document."""
    return {Path(nb["notebook"]).parent.name: {e["exercise"]: (e["status"], e["reason"]) for e in nb["exercises"]}
            for nb in doc["notebooks"]}


def test_json_grades_every_submission_of_a_folder(graded_json, submissions):
    """One document for the folder: a dead kernel or a hang fails only the exercises that submission did not
    reach, and the submissions after it are graded as usual."""
    code, doc, _ = graded_json
    assert code == 1
    assert [nb["notebook"] for nb in doc["notebooks"]] == [str(p) for p in submissions.values()]
    died = "the kernel died (out of memory, or a crash in compiled code?)"
    assert statuses(doc) == {
        "ada": {"1.1": ("passed", ""), "1.2": ("passed", "")},
        "bob": {"1.1": ("passed", ""), "1.2": ("wrong", "Exercise 1.2: square(3) gave 6, expected 9")},
        "cy": {"1.1": ("passed", ""), "1.2": ("wrong", died)},
        "dee": {"1.1": ("wrong", "the cell ran longer than the 2 s timeout"),
                "1.2": ("not run", "not reached: the cell ran longer than the 2 s timeout in cell 3")},
    }, doc
    assert (doc["passed"], doc["total"]) == (4, 8)
    cy = doc["notebooks"][2]
    assert cy["problems"] == []  # the cell after the dead one is in no exercise: not run, not an error
    assert doc["notebooks"][3]["exercises"][0]["seconds"] >= 2  # the hang is timed up to the timeout


def test_json_has_the_checks_whole_message_and_the_time_taken(graded_json):
    _, doc, _ = graded_json
    bob = {e["exercise"]: e for e in doc["notebooks"][1]["exercises"]}
    assert bob["1.2"]["message"] == "Exercise 1.2: square(3) gave 6, expected 9\nHint: x * x, not x + x"
    assert bob["1.1"]["title"] == "double" and bob["1.1"]["message"] == ""
    for nb in doc["notebooks"]:
        for e in nb["exercises"]:
            if e["status"] == "not run":
                assert e["seconds"] is None, e
            else:
                assert isinstance(e["seconds"], float) and 0 <= e["seconds"] <= nb["seconds"], e


def test_csv_is_a_gradebook_row_per_notebook_file(submissions, tmp_path):
    """The three graded submissions plus an unreadable file: the others are still graded, the exit status is 2."""
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    paths = [submissions[n] for n in ("ada", "bob", "cy")] + [broken]
    code, out, err = cli("--csv", *paths)
    assert code == 2, (out, err)
    assert f"{broken}: cannot read it as a notebook" in err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["notebook", "passed", "exercises", "1.1", "1.2", "other_errors", "seconds", "error"]
    assert [(r["notebook"], r["passed"], r["exercises"], r["1.1"], r["1.2"], r["other_errors"]) for r in rows] == [
        (str(submissions["ada"]), "2", "2", "passed", "passed", "0"),
        (str(submissions["bob"]), "1", "2", "passed", "wrong", "0"),
        (str(submissions["cy"]), "1", "2", "passed", "wrong", "0"),
        (str(broken), "0", "0", "", "", "0"),
    ], out
    assert all(float(r["seconds"]) > 0 for r in rows[:3]) and rows[3]["seconds"] == ""
    assert rows[3]["error"].startswith("cannot read it as a notebook") and not any(r["error"] for r in rows[:3])


def test_all_passed_exits_0(submissions):
    code, out, _ = cli(submissions["ada"])
    assert code == 0 and out.rstrip().endswith("2 of 2 exercises passed"), out
    assert "whole message" not in out


def test_grade_rejects_a_timeout_that_is_not_positive(submissions):
    with pytest.raises(SystemExit) as stop:
        cli("--timeout", 0, submissions["ada"])
    assert stop.value.code == 2


def test_missing_or_unreadable_notebook_exits_2(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{ not json")
    code, out, err = grade([tmp_path / "missing.ipynb", bad])
    assert code == 2 and out == ""
    assert f"{tmp_path / 'missing.ipynb'}: no such notebook" in err
    assert f"{bad}: cannot read it as a notebook" in err
