"""Exercise checks, the course build and the grader.

Notebooks import from here: ``from minideeplab.grading import ExerciseNotDone, checks``. In an IPython
kernel the import also installs `kernel.install` (a failed check shows its message, not the checker's frames).
"""

import sys

from minideeplab.grading.core import ExerciseNotDone, ExerciseWrong, compare_arrays, passed

__all__ = ["ExerciseNotDone", "ExerciseWrong", "compare_arrays", "passed"]

if "IPython" in sys.modules:  # a kernel has it loaded already; elsewhere nothing to install into
    from minideeplab.grading.kernel import install

    install()
