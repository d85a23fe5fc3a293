"""How much slower is a notebook's first run than its second? (issue 16, point 5: no slow first run)

Runs each notebook twice in a fresh kernel, cell by cell, timing every cell, then asks the kernel which numba
kernels it compiled (cache misses: what `minideeplab precompile` did not cover) and loaded from the cache:

    .venv/bin/python tools/first_run.py solutions/*.ipynb [--json results/first_run.json]

Run it right after `make setup` (which precompiles) on a fresh clone: the first run is then what a student
meets. Takes minutes (every notebook twice); not a test. Prints, per notebook, the cell that lost the most
time on its first run (first vs second run) and the slowest cell, and the numba kernels compiled in the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

# Run in the kernel after the notebook: {kernel: {"hits": [signatures], "misses": [signatures]}} of every numba
# dispatcher in minideeplab's modules (nothing under NUMBA_DISABLE_JIT=1, where they are plain functions).
_NUMBA_STATS = """
import json as _json, sys as _sys
_found = {}
for _name, _mod in list(_sys.modules.items()):
    if not _name.startswith("minideeplab"):
        continue
    for _attr, _fn in list(vars(_mod).items()):
        _stats = getattr(_fn, "stats", None)
        if hasattr(_stats, "cache_misses") and getattr(_fn, "__module__", None) == _name:
            _found[f"{_name}.{_attr}"] = {"hits": sorted(map(str, _stats.cache_hits)),
                                         "misses": sorted(map(str, _stats.cache_misses))}
print("NUMBA_STATS " + _json.dumps(_found))
"""


def run_once(path: Path, timeout: int) -> tuple[list[tuple[int, str, float]], dict]:
    """[(cell index, first line, seconds)] of every code cell, and the numba stats after the last one."""
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_NUMBA_STATS))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    times = []
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            t0 = time.perf_counter()
            client.execute_cell(cell, index)
            seconds = time.perf_counter() - t0
            if index < len(nb.cells) - 1:
                head = next((line for line in cell.source.splitlines() if line.strip()), "")[:50]
                times.append((index, head, seconds))
    stats = {}
    for out in nb.cells[-1].get("outputs", []):
        for line in str(out.get("text", "")).splitlines():
            if line.startswith("NUMBA_STATS "):
                stats = json.loads(line[len("NUMBA_STATS "):])
    errors = [f"cell {i + 1}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells)
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        print(f"  {path.name}: errors in the run: " + "; ".join(errors), file=sys.stderr)
    return times, stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write every cell's times here")
    parser.add_argument("--limit", type=float, default=2.0,
                        help="seconds a cell may lose on its first run (default: %(default)s)")
    args = parser.parse_args(argv)

    report, worst_loss = {}, 0.0
    header = f"{'notebook':<34} {'most lost (cell: 1st / 2nd run)':<44} {'slowest (1st / 2nd)':<28} compiled"
    print(header)
    for path in args.notebooks:
        first, stats1 = run_once(path, args.timeout)
        second, _ = run_once(path, args.timeout)
        cells = [(i, head, t1, t2) for (i, head, t1), (_, _, t2) in zip(first, second)]
        lost = max(cells, key=lambda c: c[2] - c[3])
        slow = max(cells, key=lambda c: c[2])
        misses = {name: s["misses"] for name, s in stats1.items() if s["misses"]}
        loaded = sum(len(s["hits"]) + len(s["misses"]) for s in stats1.values())
        worst_loss = max(worst_loss, lost[2] - lost[3])
        print(f"{path.name:<34} {f'{lost[0] + 1}: {lost[2]:.2f} s / {lost[3]:.2f} s':<44} "
              f"{f'{slow[0] + 1}: {slow[2]:.2f} s / {slow[3]:.2f} s':<28} "
              f"{sum(map(len, misses.values()))} of {loaded}")
        for name, sigs in misses.items():
            print(f"    compiled in the first run: {name} {', '.join(sigs)}")
        report[path.name] = {"cells": [dict(cell=i + 1, head=h, first=t1, second=t2) for i, h, t1, t2 in cells],
                             "numba": stats1, "total": [sum(c[2] for c in cells), sum(c[3] for c in cells)]}
        sys.stdout.flush()
    print(f"the most a cell lost on its first run: {worst_loss:.2f} s (limit {args.limit} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if worst_loss <= args.limit else 1


if __name__ == "__main__":
    raise SystemExit(main())
