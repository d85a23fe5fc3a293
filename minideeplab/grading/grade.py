"""Run notebooks in a fresh kernel and report every exercise as passed, not done, wrong or not run: for a
student a table with one line an exercise, then the whole message of each wrong exercise whose check said more
(details, hint); for an instructor one JSON document or a CSV gradebook with a row per notebook file.

The file on disk is never modified: the notebook is executed in memory. An exercise passes only
when its ``# Check N.K`` cell ran without error and printed ``Exercise N.K passed``; a kernel that
dies or a cell that times out fails every exercise it did not reach, and the next notebook gets a
kernel of its own.

Exit status of :func:`grade_notebooks`: 0 when every exercise of every notebook passed and no other
cell raised, 1 otherwise, 2 when a notebook could not be read (the others are still graded).
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
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


def run_notebook(nb, cwd: Path, timeout: int, name: str = "") -> tuple[dict[int, float], tuple[int, str] | None]:
    """Execute ``nb`` in place (in memory); return {index: seconds} of the code cells started and (cell, why)
    if it stopped early (that cell is timed too, but did not finish).

    The kernel's own stderr (start-up warnings) is shown only when the kernel dies or fails to start.
    """
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    seconds: dict[int, float] = {}
    index, stopped = -1, None
    with tempfile.TemporaryFile() as log:
        try:
            with client.setup_kernel(stderr=log):
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type == "code":
                        started = time.perf_counter()
                        try:
                            client.execute_cell(cell, index)
                        finally:
                            seconds[index] = time.perf_counter() - started
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
                print(f"{name or 'the notebook'}: the kernel's last messages:\n  " + "\n  ".join(tail),
                      file=sys.stderr)
    return seconds, stopped


def grade_notebook(path: Path, timeout: int = 600) -> dict:
    """Run one notebook and grade it: ``{"notebook", "exercises", "problems", "seconds"}``.

    ``exercises``: one dict an exercise, ``{"exercise": "N.K", "title", "status", "reason", "message",
    "seconds"}``; ``reason`` is one line (empty for passed), ``message`` the check's whole message (details and
    hint) when it said more, else the reason; ``seconds`` is the time of the exercise and check cells (null when
    neither ran). ``problems``: errors outside the exercises, one line each.
    """
    nb = nbformat.read(str(path), as_version=4)
    found = exercises(nb)
    seconds, stopped = run_notebook(nb, path.resolve().parent, timeout, str(path))
    ran = set(seconds) - ({stopped[0]} if stopped else set())
    owned = {i for ex in found for i in (ex["cell"], ex["check"]) if i is not None}

    def result(i: int | None) -> tuple[str, ...] | None:
        """Status of one cell: None when it ran cleanly, else (status, reason[, whole message])."""
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

    graded = []
    for ex in found:
        title = ex["title"] or "(the '# Exercise' cell is missing)"
        status = result(ex["cell"]) or result(ex["check"])
        if status is None and ex["cell"] is None:
            status = WRONG, f"no cell starting '# Exercise {ex['id']}: ...'"
        elif status is None and ex["check"] is None:
            status = WRONG, f"no '# Check {ex['id']}' cell"
        elif status is None and not _printed(nb.cells[ex["check"]], f"Exercise {ex['id']} passed"):
            status = WRONG, f"the check printed no 'Exercise {ex['id']} passed' line"
        own = f"Exercise {ex['id']} is not done yet: "  # a check whose function was never defined (grading.kernel)
        if status and status[0] == NOT_DONE and status[1].startswith(f"Exercise {ex['id']}:"):
            status = NOT_DONE, "", status[1]  # the title says it already
        elif status and status[0] == NOT_DONE and status[1].startswith(own):
            status = NOT_DONE, status[1][len(own):], status[1]
        elif status and status[0] == NOT_DONE:
            status = NOT_DONE, f"waits for {status[1]}"
        status = status or (PASSED, "")
        times = [seconds[i] for i in (ex["cell"], ex["check"]) if i in seconds]
        graded.append({"exercise": ex["id"], "title": title, "status": status[0], "reason": status[1],
                       "message": status[2] if len(status) > 2 else status[1],
                       "seconds": round(sum(times), 3) if times else None})

    problems = [stopped[1]] if stopped and stopped[0] < 0 else []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or i in owned:
            continue
        err = _error(cell) if i in ran else None
        reason = stopped[1] if stopped and stopped[0] == i else f"{err[0]}: {err[1]}".rstrip(": ") if err else None
        if reason:
            where = f"cell {i + 1}" + (f" ({first_line(cell.source)[:40]!r})" if cell.source.strip() else "")
            problems.append(f"{where}: {reason}")
    return {"notebook": str(path), "exercises": graded, "problems": problems,
            "seconds": round(sum(seconds.values()), 3)}


def _read_error(path: Path) -> str | None:
    """Why ``path`` cannot be graded, or None."""
    try:
        nbformat.read(str(path), as_version=4)
    except FileNotFoundError:
        return "no such notebook"
    except Exception as e:
        return f"cannot read it as a notebook ({type(e).__name__}: {e})"
    return None


def _exercise_key(exercise: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in exercise.split("."))


def _print_table(results: list[dict]) -> None:
    table = [(r["notebook"], e["exercise"], e["title"], e["status"], e["reason"])
             for r in results for e in r["exercises"]]
    header = ("notebook", "exercise", "title", "status", "reason")
    widths = [max(len(str(row[k])) for row in [header, *table]) for k in range(4)]
    for row in [header, *table]:
        print(("  ".join(str(v).ljust(w) for v, w in zip(row[:4], widths)) + f"  {row[4]}").rstrip())
    messages = [(r["notebook"], e["exercise"], e["message"]) for r in results for e in r["exercises"]
                if e["status"] == WRONG and "\n" in e["message"]]
    for path, ex, text in messages:  # the table keeps one line an exercise; the check's whole message is here
        print(f"\nExercise {ex} ({path}), the check's whole message:\n    " + "\n    ".join(text.splitlines()))
    if messages:
        print()
    problems = [f"{r['notebook']}, {p}" for r in results for p in r["problems"]]
    for p in problems:
        print(f"error outside the exercises: {p}")
    passed = sum(row[3] == PASSED for row in table)
    print(f"{passed} of {len(table)} exercises passed"
          + (f"; {len(problems)} other cell(s) raised an error" if problems else ""))


def _print_csv(results: list[dict]) -> None:
    """A gradebook: one row a notebook file, one column an exercise (its status; empty when that notebook has
    no such exercise)."""
    ids = sorted({e["exercise"] for r in results for e in r["exercises"]}, key=_exercise_key)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["notebook", "passed", "exercises", *ids, "other_errors", "seconds", "error"])
    for r in results:
        status = {e["exercise"]: e["status"] for e in r["exercises"]}
        out.writerow([r["notebook"], sum(s == PASSED for s in status.values()), len(status),
                      *(status.get(i, "") for i in ids), len(r["problems"]),
                      "" if r.get("error") else f"{r['seconds']:.1f}", r.get("error", "")])


def grade_notebooks(paths: list[Path], timeout: int = 600, output: str = "table") -> int:
    """Grade each notebook in a kernel of its own and print the results as ``output``: "table" (for a student),
    "json" (one document: {"notebooks": [grade_notebook's dicts, plus "error" for an unreadable file],
    "passed", "total"} with the counts of exercises) or "csv" (a gradebook row per notebook file).

    Returns 0 when every exercise passed and no other cell raised, 1 otherwise, 2 when a notebook could not be
    read (reported on stderr; the others are still graded).
    """
    if output not in ("table", "json", "csv"):
        raise ValueError(f"output must be 'table', 'json' or 'csv', got {output!r}")
    paths = list(map(Path, paths))
    bad = {path: why for path in paths if (why := _read_error(path))}
    if bad:
        print("error: " + "\n       ".join(f"{path}: {why}" for path, why in bad.items()), file=sys.stderr)
    results = [{"notebook": str(path), "exercises": [], "problems": [], "seconds": 0.0, "error": bad[path]}
               if path in bad else grade_notebook(path, timeout) for path in paths]
    graded = [r for r in results if "error" not in r]
    if output == "json":
        every = [e for r in graded for e in r["exercises"]]
        print(json.dumps({"notebooks": results, "passed": sum(e["status"] == PASSED for e in every),
                          "total": len(every)}, indent=1))
    elif output == "csv":
        _print_csv(results)
    elif graded:
        _print_table(graded)
    if bad:
        return 2
    passed = all(e["status"] == PASSED for r in graded for e in r["exercises"])
    return 0 if passed and not any(r["problems"] for r in graded) else 1
