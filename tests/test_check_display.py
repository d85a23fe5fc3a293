"""What a student sees in a real kernel when a check fails (nbclient, the kernel Jupyter runs): the check's
message without the checker's frames; for a crash, the case and then the student's own traceback; for a check
whose exercise cell never ran, "not done yet" instead of a NameError."""

import re

import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell as code, new_notebook

CELLS = {
    "setup": "from minideeplab.grading import ExerciseNotDone, checks",
    "never_defined": "# Check 1.1\nchecks.exercise_1_1(effective_kernel_size)",
    "wrong": "# Exercise 1.1: x\ndef effective_kernel_size(kernel, rate):\n    return kernel * rate\n\n"
             "checks.exercise_1_1(effective_kernel_size)",
    "crash": "# Exercise 2.1: x\ndef padding_of(padding):\n    return {'same': 1}[padding]\n\n"
             "def conv_output_size(size, kernel, rate=1, stride=1, padding='same'):\n"
             "    return size + 2 * padding_of(padding) - kernel + 1\n\n"
             "checks.exercise_2_1(conv_output_size)",
    "stub": "def receptive_field(layers):\n    raise ExerciseNotDone('Exercise 1.2: receptive field')\n\n"
            "checks.exercise_1_2(receptive_field)",
    "other_name_error": "# Check 1.3\nchecks.exercise_1_3(lambda layers: undefined_helper(layers))",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def outputs():
    nb = new_notebook()
    nb.cells = [code(src) for src in CELLS.values()]
    nb = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True).execute()
    result = {}
    for name, cell in zip(CELLS, nb.cells):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        result[name] = (errors[0].ename, errors[0].evalue, ANSI.sub("", "\n".join(errors[0].traceback))) \
            if errors else None
    return result


def test_the_setup_cell_runs(outputs):
    assert outputs["setup"] is None


def test_a_check_whose_function_was_never_defined_is_not_done(outputs):
    ename, evalue, shown = outputs["never_defined"]
    assert ename == "ExerciseNotDone"
    assert evalue.startswith("Exercise 1.1 is not done yet: `effective_kernel_size` is not defined")
    assert "NameError" not in shown


def test_a_wrong_answer_shows_the_message_only(outputs):
    ename, evalue, shown = outputs["wrong"]
    assert ename == "ExerciseWrong" and "Hint: kernel*rate counts one gap too many" in evalue
    assert shown == f"ExerciseWrong: {evalue}"  # no frame of the checker's source above it


def test_a_crash_names_the_case_then_shows_the_students_frames_only(outputs):
    ename, evalue, shown = outputs["crash"]
    assert ename == "ExerciseWrong"
    assert evalue.startswith("Exercise 2.1: conv_output_size(size=7, kernel=1, rate=1, stride=1, padding='valid') "
                             "raised KeyError: 'valid'")
    assert "at line 3 of padding_of: return {'same': 1}[padding]" in evalue
    message, _, student = shown.partition("The traceback of your function:")
    assert message.startswith("ExerciseWrong: Exercise 2.1: conv_output_size(")
    # both of the student's frames, the caller and the helper that raised, and nothing of the checker's
    assert "in conv_output_size" in student and "in padding_of" in student and "KeyError" in student
    assert "minideeplab" not in shown and "student_function" not in shown


def test_an_unfinished_stub_shows_its_message(outputs):
    assert outputs["stub"] == ("ExerciseNotDone", "Exercise 1.2: receptive field",
                               "ExerciseNotDone: Exercise 1.2: receptive field")


def test_a_name_error_inside_the_students_code_stays_visible(outputs):
    ename, evalue, shown = outputs["other_name_error"]
    assert ename == "ExerciseWrong" and "raised NameError: name 'undefined_helper' is not defined" in evalue
    assert "undefined_helper(layers)" in shown  # the student's line, in their traceback
