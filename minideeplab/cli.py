"""The ``minideeplab`` command line (also ``python -m minideeplab``).

Sub-commands import their modules lazily so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _course_build(args) -> int:
    from minideeplab.grading.build import build_course

    return build_course(Path(args.solutions), Path(args.course), force=args.force, check=args.check)


def _course_tidy(args) -> int:
    from minideeplab.grading.build import tidy_solutions

    return tidy_solutions(Path(args.solutions))


def _grade(args) -> int:
    from minideeplab.grading.grade import grade_notebooks

    return grade_notebooks([Path(p) for p in args.notebooks], timeout=args.timeout)


def _bench(args) -> int:
    import importlib

    run = importlib.import_module(f"minideeplab.bench.{args.bench_command}").run
    return run(threads=args.threads, repeat=args.repeat, as_json=args.json, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minideeplab",
        description="Learn DeepLab by building it: course tools, grading and benchmarks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    course = sub.add_parser("course", help="build the student course from the solutions",
                            description="Manage the student notebooks in course/.")
    course_sub = course.add_subparsers(dest="course_command", metavar="ACTION", required=True)
    build = course_sub.add_parser(
        "build", help="write course/ from solutions/",
        description="Write course/ from solutions/, replacing each '### BEGIN SOLUTION' ... "
                    "'### END SOLUTION' region with a stub that raises ExerciseNotDone. "
                    "A notebook a student has edited is never overwritten; with --force it is "
                    "first backed up to course/.backup/.")
    build.add_argument("--solutions", default="solutions", help="folder of complete notebooks (default: %(default)s)")
    build.add_argument("--course", default="course", help="folder to write (default: %(default)s)")
    build.add_argument("--force", action="store_true",
                       help="also replace edited notebooks, after backing them up to COURSE/.backup/")
    build.add_argument("--check", action="store_true",
                       help="write nothing; exit 1 if course/ differs from a fresh build")
    build.set_defaults(func=_course_build)
    tidy = course_sub.add_parser(
        "tidy", help="strip outputs from solutions/ and give every cell a stable id",
        description="For developers before a commit: remove outputs and execution counts from the "
                    "solution notebooks, give cells without an id a stable one, and set the python3 "
                    "kernelspec, so that diffs stay readable and rebuilds change nothing.")
    tidy.add_argument("--solutions", default="solutions", help="folder of complete notebooks (default: %(default)s)")
    tidy.set_defaults(func=_course_tidy)

    grade = sub.add_parser(
        "grade", help="run notebooks and print a per-exercise table",
        description="Run each notebook in a fresh kernel and report every exercise as passed, "
                    "not done or wrong. Exits 1 when any exercise is not passed.")
    grade.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="notebook files to grade")
    grade.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default: %(default)s)")
    grade.set_defaults(func=_grade)

    bench = sub.add_parser("bench", help="time scratch code against the PyTorch reference",
                           description="Benchmarks: scratch against PyTorch in the same run, same threads.")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="SUITE", required=True)
    suites = {
        "atrous": ("atrous convolution on DeepLab layer shapes, forward and backward",
                   "Time minideeplab.scratch.atrous_conv2d (forward and backward) against "
                   "torch.nn.functional.conv2d on a fixed suite of DeepLab layer shapes, with the "
                   "same thread count for numba, NumPy's BLAS and torch. Prints a table and the "
                   "median ratio scratch/torch.",
                   "threads for every library", 7, "small shapes, one repeat"),
        "crf": ("dense CRF (permutohedral lattice) against pydensecrf2",
                "Time minideeplab.scratch.crf.dense_crf (numba permutohedral lattice) against "
                "pydensecrf2 on a 375x500 photograph with 21 labels and 10 iterations, for DeepLab v2's "
                "parameters and pydensecrf's README example, after checking that they agree. "
                "Prints a table and the ratio scratch/pydensecrf.",
                "numba threads for the scratch CRF", 5, "a 60x80 image, one repeat"),
        "model": ("a whole DeepLab forward pass against torch with the same weights",
                  "Time the scratch DeepLab v3+ (ResNet-50, output stride 16) against the reference torch "
                  "module, and torchvision's deeplabv3_resnet50 (output stride 8) against the scratch v3 "
                  "holding its weights: 513x513, batch 1, eval, float32. Each side runs in its own process "
                  "with the same thread count for torch, numba and NumPy's BLAS; the outputs are checked to "
                  "agree. Prints a table of time and extra memory (peak RSS above the loaded model's) and "
                  "the ratios scratch/torch.",
                  "threads for every library", 3, "small models on a 65x65 input, one repeat"),
    }
    for name, (help_, description, threads_help, repeat, quick_help) in suites.items():
        suite = bench_sub.add_parser(name, help=help_, description=description)
        suite.add_argument("--threads", type=int, default=2, help=f"{threads_help} (default: %(default)s)")
        suite.add_argument("--repeat", type=int, default=repeat,
                           help="timed runs per case; the median is kept (default: %(default)s)")
        suite.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
        suite.add_argument("--quick", action="store_true", help=f"{quick_help}: a smoke test of the benchmark")
        suite.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
