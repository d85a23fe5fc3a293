"""Build the student notebooks in course/ from the complete notebooks in solutions/.

An exercise cell starts with ``# Exercise N.K: title`` and holds one or more regions between
``### BEGIN SOLUTION`` and ``### END SOLUTION``; the build replaces each region with

    # YOUR CODE HERE
    raise ExerciseNotDone("Exercise N.K: title")

at the BEGIN marker's indentation. The cell that checks it starts with ``# Check N.K``.

A student's work is never lost. ``course/.manifest.json`` keeps, per notebook, a hash of the
cell sources as last built. A course notebook whose sources match neither that hash nor a fresh
build was edited by the student and is kept; ``force=True`` first copies it to
``course/.backup/<stem>.<UTC time>.ipynb``. Outputs are not edits, but a notebook with outputs
is backed up the same way before it is replaced. Notebooks without a solution are left alone.

The parsing helpers here (``exercise_header``, ``check_header``, ...) are shared with the grader
and the nbval hook in conftest.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import nbformat
from nbformat.v4.rwbase import rejoin_lines

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
MANIFEST = ".manifest.json"
BACKUP = ".backup"

_EXERCISE = re.compile(r"# Exercise (\d+\.\d+): (\S.*?)\s*")
_CHECK = re.compile(r"# Check (\d+\.\d+)(?::.*|\s.*)?")
_LOOKS_LIKE_EXERCISE = re.compile(r"#\s*exercise\b", re.IGNORECASE)
_LOOKS_LIKE_CHECK = re.compile(r"#\s*check\s*\d", re.IGNORECASE)
_LOOKS_LIKE_MARKER = re.compile(r"#+\s*(begin|end)\s*solution\b", re.IGNORECASE)
_CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")


class CourseError(ValueError):
    """A solution notebook breaks the course conventions; the message names notebook and cell."""


# ---------------------------------------------------------------- parsing, shared with the grader

def first_line(source: str) -> str:
    return source.split("\n", 1)[0].rstrip()


def exercise_header(source: str) -> tuple[str, str] | None:
    """``("2.1", "title")`` when the first line is ``# Exercise 2.1: title``, else None."""
    m = _EXERCISE.fullmatch(first_line(source))
    return (m.group(1), m.group(2)) if m else None


def check_header(source: str) -> str | None:
    """``"2.1"`` when the first line is ``# Check 2.1``, else None."""
    m = _CHECK.fullmatch(first_line(source))
    return m.group(1) if m else None


def solution_regions(lines: list[str]) -> list[tuple[int, int]]:
    """(begin, end) line indices of each SOLUTION region; ValueError when unbalanced or nested."""
    regions, begin = [], None
    for i, line in enumerate(lines):
        text = line.strip()
        if text == BEGIN:
            if begin is not None:
                raise ValueError(f"line {i + 1}: '{BEGIN}' inside the region opened on line {begin + 1} "
                                 "(regions cannot nest)")
            begin = i
        elif text == END:
            if begin is None:
                raise ValueError(f"line {i + 1}: '{END}' without a '{BEGIN}' before it")
            regions.append((begin, i))
            begin = None
        elif _LOOKS_LIKE_MARKER.match(text):
            raise ValueError(f"line {i + 1}: {text!r} looks like a solution marker; "
                             f"write exactly '{BEGIN}' or '{END}'")
    if begin is not None:
        raise ValueError(f"line {begin + 1}: '{BEGIN}' is never closed by '{END}'")
    return regions


def stub_source(source: str, exercise: str, title: str) -> str:
    """The cell source with each SOLUTION region replaced by the ExerciseNotDone stub."""
    lines = source.split("\n")
    out, start = [], 0
    message = json.dumps(f"Exercise {exercise}: {title}", ensure_ascii=False)
    for begin, end in solution_regions(lines):
        indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
        out += lines[start:begin]
        out += [f"{indent}# YOUR CODE HERE", f"{indent}raise ExerciseNotDone({message})"]
        start = end + 1
    return "\n".join(out + lines[start:])


def exercises(nb) -> list[dict]:
    """Exercises of a notebook in order: ``{"id", "title", "cell", "check"}`` (cell indices or None).

    Works on solutions and course notebooks alike; an id seen only in a check cell has title None.
    """
    found: dict[str, dict] = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        header, check = exercise_header(cell.source), check_header(cell.source)
        if header:
            entry = found.setdefault(header[0], {"id": header[0], "title": None, "cell": None, "check": None})
            if entry["cell"] is None:
                entry.update(title=header[1], cell=i)
        elif check:
            entry = found.setdefault(check, {"id": check, "title": None, "cell": None, "check": None})
            if entry["check"] is None:
                entry["check"] = i
    return list(found.values())


# ---------------------------------------------------------------- reading and writing notebooks

def read_notebook(path: Path):
    """Read a notebook as it is on disk (no ids invented, unlike nbformat.read); CourseError if unreadable."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CourseError(f"{path}: cannot read the notebook ({e})") from None
    if not isinstance(raw, dict) or raw.get("nbformat") != 4 or not isinstance(raw.get("cells"), list):
        got = raw.get("nbformat") if isinstance(raw, dict) else type(raw).__name__
        raise CourseError(f"{path}: expected a notebook in nbformat 4, got nbformat {got!r}")
    return rejoin_lines(nbformat.from_dict(raw))


def normalise(nb):
    """A copy without outputs, execution counts or volatile metadata, with the python3 kernelspec."""
    nb = copy.deepcopy(nb)
    nb.metadata = nbformat.from_dict({"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}})
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    for cell in nb.cells:
        for key in _VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def dumps(nb) -> str:
    """The one serialisation used for everything written: nbformat's (indent 1, sorted keys) + newline."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))


def sources_hash(nb) -> str:
    """sha256 of the cell types and sources: what a student edits. Outputs and metadata do not count."""
    data = json.dumps([[c.cell_type, c.source] for c in nb.cells], ensure_ascii=False)
    return "sha256:" + hashlib.sha256(data.encode("utf-8")).hexdigest()


def _has_outputs(nb) -> bool:
    return any(c.cell_type == "code" and c.get("outputs") for c in nb.cells)


def _where(path: Path, index: int, cell) -> str:
    line = first_line(cell.get("source", ""))[:60]
    ident = f"id {cell['id']!r}, " if "id" in cell else ""
    return f"{path}, cell {index + 1} ({ident}{cell.cell_type}{', starting ' + repr(line) if line else ''})"


# ---------------------------------------------------------------- building one notebook

def build_notebook(nb, path: Path):
    """Validate a solution notebook and return its normalised course version; CourseError lists every problem."""
    errors, ids = [], {}
    exercise_at: dict[str, int] = {}
    check_at: dict[str, int] = {}
    imports_stub = False
    course = normalise(nb)
    for i, cell in enumerate(nb.cells):
        where = _where(path, i, cell)
        ident = cell.get("id")
        if ident is None:
            errors.append(f"{where}: the cell has no id; run `minideeplab course tidy` to give it one")
        elif not isinstance(ident, str) or not _CELL_ID.match(ident):
            errors.append(f"{where}: invalid cell id {ident!r}; run `minideeplab course tidy`")
        elif ident in ids:
            errors.append(f"{where}: cell id {ident!r} is also used by cell {ids[ident] + 1}; "
                          "run `minideeplab course tidy`")
        else:
            ids[ident] = i
        source = cell.get("source", "")
        is_code = cell.cell_type == "code"
        header = exercise_header(source) if is_code else None
        if header and header[0] in exercise_at:
            errors.append(f"{where}: duplicate Exercise {header[0]} (also cell {exercise_at[header[0]] + 1})")
            continue
        if header:
            exercise_at[header[0]] = i
        try:
            regions = solution_regions(source.split("\n"))
        except ValueError as e:
            errors.append(f"{where}: {e}")
            continue
        if not is_code:
            if regions:
                errors.append(f"{where}: solution regions are only allowed in code cells")
            continue
        check, head = check_header(source), first_line(source)
        if header:
            ex, title = header
            if not regions:
                errors.append(f"{where}: Exercise {ex} has no '{BEGIN}' ... '{END}' region, so students "
                              "would see the whole answer")
                continue
            if not imports_stub:
                errors.append(f"{where}: the stub raises ExerciseNotDone, but no earlier code cell imports it "
                              "(add `from minideeplab.grading import ExerciseNotDone, checks` to the setup cell)")
            stub = stub_source(source, ex, title)
            if _syntax_error(source) is None and _syntax_error(stub) is not None:
                errors.append(f"{where}: the stubbed cell is not valid Python: {_syntax_error(stub)}")
            course.cells[i].source = stub
        elif regions:
            errors.append(f"{where}: a solution region needs the cell's first line to be "
                          f"'# Exercise N.K: short title', got {head!r}")
        elif check:
            if check in check_at:
                errors.append(f"{where}: duplicate '# Check {check}' cell (also cell {check_at[check] + 1})")
            elif check not in exercise_at:
                later = "comes before its exercise cell" if any(
                    (exercise_header(c.source) or ("",))[0] == check for c in nb.cells[i:]
                    if c.cell_type == "code") else "has no '# Exercise " + check + ": ...' cell"
                errors.append(f"{where}: '# Check {check}' {later}")
            check_at.setdefault(check, i)
        elif _LOOKS_LIKE_EXERCISE.match(head) or _LOOKS_LIKE_CHECK.match(head):
            errors.append(f"{where}: malformed header {head!r}; expected '# Exercise N.K: short title' "
                          "or '# Check N.K'")
        if "ExerciseNotDone" in source and not header:
            imports_stub = True
    for ex, i in exercise_at.items():
        if ex not in check_at:
            errors.append(f"{_where(path, i, nb.cells[i])}: Exercise {ex} has no '# Check {ex}' cell after it")
    if errors:
        raise CourseError("\n".join(errors))
    return course


def _syntax_error(source: str) -> str | None:
    try:
        compile(source, "<cell>", "exec")
    except SyntaxError as e:
        return f"{e.msg} (line {e.lineno})"
    return None


# ---------------------------------------------------------------- the course folder

def _load_manifest(course: Path) -> dict[str, str]:
    path = course / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["notebooks"]
        return {str(k): str(v) for k, v in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        print(f"warning: {path} is unreadable ({e}); every existing course notebook counts as edited",
              file=sys.stderr)
        return {}


def _manifest_text(entries: dict[str, str]) -> str:
    data = {"about": "Written by `minideeplab course build`: the hash of each notebook's cell sources as "
                     "last built. A notebook whose sources differ was edited and is never overwritten.",
            "notebooks": dict(sorted(entries.items()))}
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def backup(path: Path) -> Path:
    """Copy ``path`` to ``<its folder>/.backup/<stem>.<UTC time>.ipynb``; never overwrites a backup."""
    folder = path.parent / BACKUP
    folder.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    data = path.read_bytes()
    for n in range(1, 1000):
        target = folder / f"{path.stem}.{stamp}{'' if n == 1 else f'-{n}'}.ipynb"
        try:
            with open(target, "xb") as f:
                f.write(data)
            return target
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: too many backups of {path.name} at {stamp}")


def build_course(solutions: Path, course: Path, force: bool = False, check: bool = False) -> int:
    """Write ``course/<name>.ipynb`` for every ``solutions/*.ipynb``; return the exit code.

    0: done (edited notebooks kept are not an error). 1: with ``check``, something differs from a
    fresh build. 2: a solution breaks the conventions (nothing is written).
    """
    solutions, course = Path(solutions), Path(course)
    if not solutions.is_dir():
        print(f"error: no solutions folder at {solutions}", file=sys.stderr)
        return 2
    paths = sorted(solutions.glob("*.ipynb"))
    if not paths:
        print(f"no notebooks in {solutions}; nothing to build")
        return 0

    built, errors, seen = {}, [], {}
    for path in paths:
        try:
            built[path.name] = build_notebook(read_notebook(path), path)
        except CourseError as e:
            errors.append(str(e))
            continue
        for ex in exercises(built[path.name]):
            if ex["id"] in seen:
                errors.append(f"{path}: Exercise {ex['id']} is also in {seen[ex['id']]}; exercise ids must be unique")
            seen.setdefault(ex["id"], path)
    if errors:
        print("error: the solutions break the course conventions:\n" + "\n".join(errors), file=sys.stderr)
        return 2

    if not check:
        course.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(course)
    new_manifest = dict(manifest)
    stale = 0
    for name, nb in built.items():
        target, text, fresh = course / name, dumps(nb), sources_hash(nb)
        state, current = _state(target, text, fresh, manifest.get(name))
        if state == "unchanged":
            new_manifest[name] = fresh
            print(f"{target}: unchanged")
            continue
        if check:
            stale += 1
            print(f"{target}: out of date ({_CHECK_WHY[state]})")
            continue
        if state == "edited" and not force:
            print(f"{target}: kept because you edited it" + (
                "" if manifest.get(name) == fresh else
                f"; {solutions / name} has changed since: `minideeplab course build --force` would back "
                f"your copy up to {course / BACKUP}/ and rebuild it"))
            continue
        if state == "outputs" and not force:
            new_manifest[name] = fresh
            print(f"{target}: up to date (kept as it is, with your outputs)")
            continue
        note = ""
        if state == "edited" or (current is not None and _has_outputs(current)):
            note = f" (your previous copy is saved as {backup(target)})"
        _write(target, text)
        new_manifest[name] = fresh
        print(f"{target}: {'written' if state == 'missing' else 'rebuilt'}{note}")

    manifest_path, manifest_text = course / MANIFEST, _manifest_text(new_manifest)
    old_text = manifest_path.read_text(encoding="utf-8") if manifest_path.exists() else None
    if old_text != manifest_text:
        if check:
            stale += 1
            print(f"{manifest_path}: out of date")
        else:
            _write(manifest_path, manifest_text)
    if check and stale:
        print(f"{course} is out of date: run `minideeplab course build`", file=sys.stderr)
    return 1 if check and stale else 0


_CHECK_WHY = {"missing": "missing", "stale": "the solutions changed",
              "outputs": "it has outputs or metadata that a fresh build does not",
              "edited": "its sources differ from the last build: edited by hand?"}


def _state(target: Path, text: str, fresh: str, last_built: str | None):
    """Classify an existing course notebook against a fresh build; returns (state, parsed notebook)."""
    if not target.exists():
        return "missing", None
    if target.read_bytes() == text.encode("utf-8"):
        return "unchanged", None
    try:
        current = read_notebook(target)
        current_hash = sources_hash(current)
    except (CourseError, AttributeError, TypeError):
        return "edited", None  # a notebook we cannot read is the student's business
    if current_hash == fresh:
        return "outputs", current
    if current_hash == last_built:
        return "stale", current
    return "edited", current


# ---------------------------------------------------------------- tidying the solutions

def _stable_id(name: str, index: int, taken: set[str]) -> str:
    for salt in range(1000):
        ident = hashlib.sha1(f"{name}:{index}:{salt}".encode()).hexdigest()[:8]
        if ident not in taken:
            return ident
    raise RuntimeError("no free cell id")  # pragma: no cover


def tidy_notebook(nb, name: str):
    """Normalised copy of a solution notebook in which every cell has a valid, unique, stable id."""
    nb = normalise(nb)
    taken = {c.get("id") for c in nb.cells}
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells):
        ident = cell.get("id")
        if not isinstance(ident, str) or not _CELL_ID.match(ident) or ident in seen:
            ident = cell["id"] = _stable_id(name, i, taken | seen)
        seen.add(ident)
    return nb


def tidy_solutions(solutions: Path) -> int:
    """Strip outputs from ``solutions/*.ipynb``, give cells stable ids, set the kernelspec. Idempotent."""
    solutions = Path(solutions)
    if not solutions.is_dir():
        print(f"error: no solutions folder at {solutions}", file=sys.stderr)
        return 2
    code = 0
    for path in sorted(solutions.glob("*.ipynb")):
        try:
            text = dumps(tidy_notebook(read_notebook(path), path.stem))
        except CourseError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
            continue
        if path.read_bytes() == text.encode("utf-8"):
            print(f"{path}: unchanged")
        else:
            _write(path, text)
            print(f"{path}: tidied")
    return code
