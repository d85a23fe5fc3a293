"""Run notebooks in a fresh kernel and report every exercise as passed, not done or wrong: a table with one
line an exercise, then the whole message of each wrong exercise whose check said more (details, hint).

The file on disk is never modified: the notebook is executed in memory. An exercise passes only
when its ``# Check N.K`` cell ran without error and printed ``Exercise N.K passed``; a kernel that
dies or a cell that times out fails every exercise it did not reach.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from minideeplab.grading.build import exercises, first_line

PASSED, NOT_DONE, WRONG, NOT_RUN = "passed", "not done", "wrong", "not run"


def _error(cell) -> tuple[str, str, str] | None:
    """(ename, first line of evalue, the whole evalue) of the cell's error output, if any."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            text = str(out.get("evalue", "")).strip()
            lines = text.splitlines()
            return str(out.get("ename", "Error")), lines[0] if lines else "", text
    return None


def _printed(cell, text: str) -> bool:
    return any(out.get("output_type") == "stream" and out.get("name") == "stdout"
               and any(line.startswith(text) for line in str(out.get("text", "")).splitlines())
               for out in cell.get("outputs", []))


def run_notebook(nb, cwd: Path, timeout: int) -> tuple[set[int], tuple[int, str] | None]:
    """Execute ``nb`` in place (in memory); return the indices of cells run and (cell, why) if it stopped early.

    The kernel's own stderr (start-up warnings) is shown only when the kernel dies or fails to start.
    """
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    ran: set[int] = set()
    index, stopped = -1, None
    with tempfile.TemporaryFile() as log:
        try:
            with client.setup_kernel(stderr=log):
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type == "code":
                        client.execute_cell(cell, index)
                        ran.add(index)
        except CellTimeoutError:
            stopped = index, f"the cell ran longer than the {timeout} s timeout"
        except DeadKernelError:
            stopped = index, "the kernel died (out of memory, or a crash in compiled code?)"
        except Exception as e:  # kernel failed to start, lost connection, ...
            stopped = index, f"could not run the notebook: {type(e).__name__}: {e}"
        if stopped and not stopped[1].startswith("the cell ran longer"):
            log.seek(0)
            tail = log.read().decode("utf-8", "replace").strip().splitlines()[-10:]
            if tail:
                print("the kernel's last messages:\n  " + "\n  ".join(tail), file=sys.stderr)
    return ran, stopped


def grade_notebook(path: Path, timeout: int = 600) -> tuple[list[tuple[str, str, str, str]], list[str], dict]:
    """Rows ``(exercise, title, status, reason)``, problems outside exercises, and {exercise: the whole message}
    of each wrong exercise whose message has more than the reason's line (the details and the hint), for one
    notebook."""
    nb = nbformat.read(str(path), as_version=4)
    found = exercises(nb)
    ran, stopped = run_notebook(nb, path.resolve().parent, timeout)
    owned = {i for ex in found for i in (ex["cell"], ex["check"]) if i is not None}

    def result(i: int | None) -> tuple[str, str] | None:
        """Status of one cell: None when it ran cleanly, else (status, reason)."""
        if i is None:
            return None
        if stopped and stopped[0] == i:
            return WRONG, stopped[1]
        if i not in ran:
            if stopped is None:
                return NOT_RUN, "not run"
            return NOT_RUN, f"not reached: {stopped[1]}" + (f" in cell {stopped[0] + 1}" if stopped[0] >= 0 else "")
        err = _error(nb.cells[i])
        if err is None:
            return None
        if err[0] == "ExerciseNotDone":
            return NOT_DONE, err[1]
        if err[0] == "ExerciseWrong":
            return WRONG, err[1], err[2]
        return WRONG, f"{err[0]}: {err[1]}".rstrip(": "), f"{err[0]}: {err[2]}"

    rows, details = [], {}
    for ex in found:
        title = ex["title"] or "(the '# Exercise' cell is missing)"
        status = result(ex["cell"]) or result(ex["check"])
        if status is None and ex["cell"] is None:
            status = WRONG, f"no cell starting '# Exercise {ex['id']}: ...'"
        elif status is None and ex["check"] is None:
            status = WRONG, f"no '# Check {ex['id']}' cell"
        elif status is None and not _printed(nb.cells[ex["check"]], f"Exercise {ex['id']} passed"):
            status = WRONG, f"the check printed no 'Exercise {ex['id']} passed' line"
        if status and status[0] == NOT_DONE and status[1].startswith(f"Exercise {ex['id']}:"):
            status = NOT_DONE, ""  # the title says it already
        elif status and status[0] == NOT_DONE:
            status = NOT_DONE, f"waits for {status[1]}"
        status = status or (PASSED, "")
        if status[0] == WRONG and len(status) > 2 and "\n" in status[2]:
            details[ex["id"]] = status[2]
        rows.append((ex["id"], title, *status[:2]))

    problems = [stopped[1]] if stopped and stopped[0] < 0 else []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or i in owned:
            continue
        err = _error(cell) if i in ran else None
        reason = stopped[1] if stopped and stopped[0] == i else f"{err[0]}: {err[1]}".rstrip(": ") if err else None
        if reason:
            where = f"cell {i + 1}" + (f" ({first_line(cell.source)[:40]!r})" if cell.source.strip() else "")
            problems.append(f"{where}: {reason}")
    return rows, problems, details


def grade_notebooks(paths: list[Path], timeout: int = 600) -> int:
    """Grade each notebook and print one table; 0 when every exercise passed, 1 otherwise, 2 when unreadable."""
    bad = []
    for path in map(Path, paths):
        try:
            nbformat.read(str(path), as_version=4)
        except FileNotFoundError:
            bad.append(f"{path}: no such notebook")
        except Exception as e:
            bad.append(f"{path}: cannot read it as a notebook ({type(e).__name__}: {e})")
    if bad:
        print("error: " + "\n       ".join(bad), file=sys.stderr)
        return 2

    table, problems, messages = [], [], []
    for path in map(Path, paths):
        rows, other, details = grade_notebook(path, timeout)
        table += [(str(path), *row) for row in rows]
        problems += [f"{path}, {p}" for p in other]
        messages += [(path, ex, text) for ex, text in details.items()]

    header = ("notebook", "exercise", "title", "status", "reason")
    widths = [max(len(str(r[k])) for r in [header, *table]) for k in range(4)]
    for row in [header, *table]:
        print(("  ".join(str(v).ljust(w) for v, w in zip(row[:4], widths)) + f"  {row[4]}").rstrip())
    for path, ex, text in messages:  # the table keeps one line an exercise; the check's whole message is here
        print(f"\nExercise {ex} ({path}), the check's whole message:\n    " + "\n    ".join(text.splitlines()))
    if messages:
        print()
    for p in problems:
        print(f"error outside the exercises: {p}")
    passed = sum(r[3] == PASSED for r in table)
    print(f"{passed} of {len(table)} exercises passed"
          + (f"; {len(problems)} other cell(s) raised an error" if problems else ""))
    return 0 if passed == len(table) and not problems else 1
