"""minideeplab grade: runs notebooks in a fresh kernel, one row per exercise, never edits the file."""

import contextlib
import io
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell as code, new_notebook

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
)
ALL_PASS = notebook("# Exercise 1.1: one\none = 1", "# Check 1.1\nassert one == 1\nprint('Exercise 1.1 passed')")
DIES = notebook("# Exercise 1.1: crash\nimport os", "# Check 1.1\nos._exit(1)\nprint('Exercise 1.1 passed')",
                "# Exercise 1.2: after\nz = 1", "# Check 1.2\nprint('Exercise 1.2 passed')")
HANGS = notebook("# Exercise 1.1: slow\nimport time", "# Check 1.1\ntime.sleep(60)\nprint('Exercise 1.1 passed')")


def grade(paths, **kw):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = grade_notebooks(paths, **kw)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Each fixture notebook graded once: {name: (path, bytes before, mtime before, (code, out, err))}."""
    folder = tmp_path_factory.mktemp("nbs")
    (folder / "data.txt").write_text("hello")
    results = {}
    for name, nb, kw in [("mixed", MIXED, {}), ("all_pass", ALL_PASS, {}), ("dies", DIES, {}),
                         ("hangs", HANGS, {"timeout": 2})]:
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
    }, out
    assert rows(out)["1.4"][1].startswith("SyntaxError: ")
    assert re.search(r"mixed\.ipynb\s+1\.1\s+read the data file\s+passed", out)
    assert re.search(r"mixed\.ipynb, cell 12 \('undefined_name.*'\): NameError: name 'undefined_name'", out), out
    assert out.rstrip().endswith("1 of 5 exercises passed; 1 other cell(s) raised an error")


def test_a_wrong_exercise_shows_the_checks_whole_message_under_the_table(graded):
    """The table keeps the first line; the details and the hint a check cell would show follow it."""
    code, out, _ = graded["mixed"][3]
    table_end = out.index("1.5")
    whole = out.index("Exercise 1.2 (")
    assert whole > table_end, out
    assert re.search(r"Exercise 1\.2 \(\S+mixed\.ipynb\), the check's whole message:\n"
                     r"    Exercise 1\.2: triple\(2\) gave 4, expected 6\n    second line\n", out), out
    assert "Exercise 1.1 (" not in out and "Exercise 1.5 (" not in out  # one-line reasons stay in the table
    _, all_pass, _ = graded["all_pass"][3]
    assert "whole message" not in all_pass


def test_all_passed_exits_0(graded):
    code, out, _ = graded["all_pass"][3]
    assert code == 0 and out.rstrip().endswith("1 of 1 exercises passed"), out


def test_grading_never_modifies_the_notebook(graded):
    for path, data, mtime, _ in graded.values():
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime


def test_a_dead_kernel_is_never_a_pass(graded):
    code, out, _ = graded["dies"][3]
    assert code == 1
    assert rows(out)["1.1"] == ("wrong", "the kernel died (out of memory, or a crash in compiled code?)"), out
    assert rows(out)["1.2"][0] == "not run"


def test_a_timeout_is_never_a_pass(graded):
    code, out, _ = graded["hangs"][3]
    assert code == 1 and rows(out)["1.1"] == ("wrong", "the cell ran longer than the 2 s timeout"), out


def test_missing_or_unreadable_notebook_exits_2(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{ not json")
    code, out, err = grade([tmp_path / "missing.ipynb", bad])
    assert code == 2 and out == ""
    assert f"{tmp_path / 'missing.ipynb'}: no such notebook" in err
    assert f"{bad}: cannot read it as a notebook" in err
