"""Exercise checks, the course build and the grader.

Notebooks import from here: ``from minideeplab.grading import ExerciseNotDone, checks``.
"""

from minideeplab.grading.core import ExerciseNotDone, ExerciseWrong, compare_arrays, passed

__all__ = ["ExerciseNotDone", "ExerciseWrong", "compare_arrays", "passed"]
