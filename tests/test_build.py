"""minideeplab course build / tidy: stubs, validation, stable output, and a student's work never lost."""

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from minideeplab.grading.build import (
    CourseError, backup, build_course, build_notebook, read_notebook, stub_source, tidy_solutions)

ROOT = Path(__file__).resolve().parents[1]
SETUP = "from minideeplab.grading import ExerciseNotDone, checks"
EXERCISE = '''# Exercise 1.1: double a number
def double(x):
    """Return 2 * x."""
    ### BEGIN SOLUTION
    return 2 * x
    ### END SOLUTION'''
CHECK = "# Check 1.1\nassert double(2) == 4\nprint('Exercise 1.1 passed')"


def solution(*extra, exercise=EXERCISE, check=CHECK):
    nb = new_notebook()
    nb.cells = [new_markdown_cell("# A fixture"), new_code_cell(SETUP), new_code_cell(exercise),
                new_code_cell(check), *extra]
    nb.cells[2].outputs = [new_output("stream", text="left over\n")]
    nb.cells[2].execution_count = 7
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.9"}
    nb.metadata["kernelspec"] = {"name": "venv", "display_name": "my venv", "language": "python"}
    return nb


@pytest.fixture
def dirs(tmp_path):
    (tmp_path / "solutions").mkdir()
    nbformat.write(solution(), tmp_path / "solutions" / "01_a.ipynb")
    return tmp_path / "solutions", tmp_path / "course"


def build(dirs, **kw):
    return build_course(*dirs, **kw)


def test_stub_keeps_code_outside_regions_at_the_marker_indentation():
    source = ("# Exercise 2.1: two regions\nimport math\n\ndef f(x):\n    \"\"\"Doc.\"\"\"\n"
              "    y = 1\n        ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\n"
              "### BEGIN SOLUTION\nz = f(1)\n### END SOLUTION\nprint('after')")
    assert stub_source(source, "2.1", "two regions") == (
        "# Exercise 2.1: two regions\nimport math\n\ndef f(x):\n    \"\"\"Doc.\"\"\"\n    y = 1\n"
        "        # YOUR CODE HERE\n        raise ExerciseNotDone(\"Exercise 2.1: two regions\")\n\n"
        "# YOUR CODE HERE\nraise ExerciseNotDone(\"Exercise 2.1: two regions\")\nprint('after')")


def test_course_notebook_is_stubbed_stripped_and_keeps_the_ids(dirs, capsys):
    assert build(dirs) == 0
    assert "01_a.ipynb: written" in capsys.readouterr().out
    sol, course = read_notebook(dirs[0] / "01_a.ipynb"), read_notebook(dirs[1] / "01_a.ipynb")
    assert [c.id for c in course.cells] == [c.id for c in sol.cells]
    assert all(c.outputs == [] and c.execution_count is None for c in course.cells if c.cell_type == "code")
    assert course.metadata == {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                              "name": "python3"}, "language_info": {"name": "python"}}
    assert course.cells[2].source == ('# Exercise 1.1: double a number\ndef double(x):\n    """Return 2 * x."""\n'
                                      '    # YOUR CODE HERE\n    raise ExerciseNotDone("Exercise 1.1: double a number")')
    assert course.cells[3].source == CHECK
    text = (dirs[1] / "01_a.ipynb").read_text()
    assert text.endswith("}\n") and "return 2 * x" not in text
    assert set(json.loads((dirs[1] / ".manifest.json").read_text())["notebooks"]) == {"01_a.ipynb"}


def test_rebuild_from_unchanged_solutions_touches_nothing(dirs, capsys):
    build(dirs)
    files = [dirs[1] / "01_a.ipynb", dirs[1] / ".manifest.json"]
    before = [f.read_bytes() for f in files]
    for f in files:
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert build(dirs) == 0 and build(dirs, check=True) == 0
    assert [f.read_bytes() for f in files] == before
    assert [f.stat().st_mtime_ns for f in files] == [1_000_000_000] * 2
    assert "01_a.ipynb: unchanged" in capsys.readouterr().out


def _cell_without_id(nb):
    del nb.cells[1]["id"]


BROKEN = {
    "region without an exercise header": (
        lambda nb: nb.cells.append(new_code_cell("x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION")),
        "needs the cell's first line to be '# Exercise N.K: short title', got 'x = 1'"),
    "BEGIN never closed": (lambda nb: setattr(nb.cells[2], "source", EXERCISE.replace("    ### END SOLUTION", "")),
                           "'### BEGIN SOLUTION' is never closed"),
    "END without BEGIN": (lambda nb: setattr(nb.cells[2], "source", EXERCISE + "\n### END SOLUTION"),
                          "'### END SOLUTION' without a '### BEGIN SOLUTION'"),
    "nested regions": (lambda nb: setattr(nb.cells[2], "source", EXERCISE.replace(
        "    return", "    ### BEGIN SOLUTION\n    return")), "regions cannot nest"),
    "misspelt marker": (lambda nb: setattr(nb.cells[2], "source", EXERCISE.replace("### END", "## END")),
                        "looks like a solution marker"),
    "exercise without check": (lambda nb: nb.cells.pop(3), "Exercise 1.1 has no '# Check 1.1' cell"),
    "check without exercise": (lambda nb: nb.cells.append(new_code_cell("# Check 1.2\nprint(1)")),
                               "'# Check 1.2' has no '# Exercise 1.2: ...' cell"),
    "duplicate exercise": (lambda nb: nb.cells.append(new_code_cell(EXERCISE)), "duplicate Exercise 1.1"),
    "cell without id": (_cell_without_id, "cell 2 (code, starting 'from minideeplab.grading import"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_solutions_are_refused_with_notebook_and_cell(dirs, capsys, case):
    mutate, expected = BROKEN[case]
    nb = solution()
    mutate(nb)
    path = dirs[0] / "01_a.ipynb"
    path.write_text(json.dumps(nb))  # plain JSON: nbformat.write would invent a missing id
    assert build(dirs) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err, err
    assert not dirs[1].exists(), "nothing may be written when a solution is broken"
    with pytest.raises(CourseError, match=re.escape(expected)):
        build_notebook(read_notebook(path), path)
    if case == "cell without id":
        assert "has no id; run `minideeplab course tidy`" in err


def test_exercise_ids_must_be_unique_across_notebooks(dirs, capsys):
    nbformat.write(solution(), dirs[0] / "02_b.ipynb")
    assert build(dirs) == 2
    assert "Exercise 1.1 is also in" in capsys.readouterr().err


def _edit(path, new_source="def double(x):\n    return x + x  # my answer"):
    nb = read_notebook(path)
    nb.cells[2].source = "# Exercise 1.1: double a number\n" + new_source
    path.write_text(json.dumps(nb))
    return path.read_bytes()


def _change_solution(dirs):
    nb = read_notebook(dirs[0] / "01_a.ipynb")
    nb.cells[0].source = "# A fixture, revised"
    (dirs[0] / "01_a.ipynb").write_text(nbformat.writes(nb))


def test_edited_notebook_is_kept_then_backed_up_by_force(dirs, capsys):
    build(dirs)
    target = dirs[1] / "01_a.ipynb"
    edited = _edit(target)
    _change_solution(dirs)
    capsys.readouterr()
    assert build(dirs) == 0
    out = capsys.readouterr().out
    assert target.read_bytes() == edited
    assert "kept because you edited it" in out and "--force" in out and ".backup" in out
    assert build(dirs, check=True) == 1
    assert build(dirs, force=True) == 0
    backups = list((dirs[1] / ".backup").iterdir())
    assert len(backups) == 1 and re.fullmatch(r"01_a\.\d{8}T\d{6}Z\.ipynb", backups[0].name)
    assert backups[0].read_bytes() == edited
    assert "revised" in target.read_text() and "my answer" not in target.read_text()
    assert str(backups[0]) in capsys.readouterr().out
    assert build(dirs, check=True) == 0


def test_edits_are_kept_quietly_while_the_solutions_do_not_change(dirs, capsys):
    build(dirs)
    edited = _edit(dirs[1] / "01_a.ipynb")
    capsys.readouterr()
    assert build(dirs) == 0
    out = capsys.readouterr().out
    assert "kept because you edited it" in out and "--force" not in out
    assert (dirs[1] / "01_a.ipynb").read_bytes() == edited


def test_backups_never_overwrite_each_other(tmp_path):
    path = tmp_path / "n.ipynb"
    path.write_text("first")
    one = backup(path)
    path.write_text("second")
    two = backup(path)
    assert one != two and one.read_text() == "first" and two.read_text() == "second"


def test_outputs_are_not_edits(dirs, capsys):
    build(dirs)
    target = dirs[1] / "01_a.ipynb"
    nb = read_notebook(target)
    nb.cells[3].outputs = [new_output("stream", text="Exercise 1.1 passed\n")]
    nb.cells[3].execution_count = 1
    run = nbformat.writes(nb).encode()
    target.write_bytes(run)
    assert build(dirs) == 0  # unchanged solutions: the run notebook stays as it is
    assert target.read_bytes() == run and "up to date" in capsys.readouterr().out
    _change_solution(dirs)
    assert build(dirs) == 0  # changed solutions: rebuilt without --force, outputs backed up
    assert "revised" in target.read_text() and '"outputs": []' in target.read_text()
    [saved] = (dirs[1] / ".backup").iterdir()
    assert saved.read_bytes() == run


def test_unknown_notebooks_in_course_count_as_edited_or_are_left_alone(dirs, capsys):
    dirs[1].mkdir()
    mine, extra = dirs[1] / "01_a.ipynb", dirs[1] / "99_mine.ipynb"
    mine.write_text("not even json")
    extra.write_text("{}")
    assert build(dirs) == 0
    assert mine.read_text() == "not even json" and extra.read_text() == "{}"
    assert "kept because you edited it" in capsys.readouterr().out


def test_check_reports_out_of_date_and_writes_nothing(dirs, capsys):
    assert build(dirs, check=True) == 1 and not dirs[1].exists()
    build(dirs)
    assert build(dirs, check=True) == 0
    _change_solution(dirs)
    before = (dirs[1] / "01_a.ipynb").read_bytes()
    capsys.readouterr()
    assert build(dirs, check=True) == 1
    assert "01_a.ipynb: out of date (the solutions changed)" in capsys.readouterr().out
    assert (dirs[1] / "01_a.ipynb").read_bytes() == before


def test_tidy_strips_outputs_gives_stable_ids_and_is_idempotent(dirs, capsys):
    path = dirs[0] / "01_a.ipynb"
    raw = json.loads(nbformat.writes(solution()))
    raw["nbformat_minor"] = 4
    for cell in raw["cells"]:
        del cell["id"]
    raw["cells"][1]["metadata"]["tags"] = ["keep-me"]
    path.write_text(json.dumps(raw))
    assert tidy_solutions(dirs[0]) == 0
    tidied = path.read_bytes()
    nb = read_notebook(path)
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{8}", i) for i in ids)
    assert not any(c.get("outputs") or c.get("execution_count") for c in nb.cells)
    assert nb.metadata.kernelspec.name == "python3" and nb.cells[1].metadata.tags == ["keep-me"]
    assert tidy_solutions(dirs[0]) == 0 and path.read_bytes() == tidied
    assert "01_a.ipynb: unchanged" in capsys.readouterr().out
    path.write_text(json.dumps(raw))  # same input, same ids
    tidy_solutions(dirs[0])
    assert path.read_bytes() == tidied
    assert build(dirs) == 0


def test_repository_course_is_up_to_date():
    if not list((ROOT / "solutions").glob("*.ipynb")):
        pytest.skip("solutions/ has no notebooks yet")
    assert build_course(ROOT / "solutions", ROOT / "course", check=True) == 0, (
        "course/ differs from a fresh build of solutions/: run `minideeplab course build` and commit course/")
