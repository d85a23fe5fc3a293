"""One check per exercise: ``checks.exercise_N_K(student_function)``.

Each check runs the student's function on fixed, seeded inputs and compares it with a PyTorch
measurement or reference (never with the scratch implementations), shape first, then dtype and NaN,
then values. It prints one line on success and raises ExerciseWrong otherwise, with a hint
when the answer matches a known mistake; an ExerciseNotDone from an unfinished stub passes
through untouched.

One module per notebook, named like the scratch module it teaches, each listing its checks in
``__all__``; notebooks use this package's names: ``checks.exercise_2_2(fn)``.
"""

from minideeplab.grading.checks.receptive import *  # noqa: F403  notebook 01
from minideeplab.grading.checks.atrous import *  # noqa: F403  notebook 02
from minideeplab.grading.checks.backbone import *  # noqa: F403  notebook 03
from minideeplab.grading.checks.aspp import *  # noqa: F403  notebook 04
from minideeplab.grading.checks.deeplab import *  # noqa: F403  notebook 05
from minideeplab.grading.checks.backprop import *  # noqa: F403  notebook 06
from minideeplab.grading.checks.metrics import *  # noqa: F403  notebook 07
from minideeplab.grading.checks.crf import *  # noqa: F403  notebook 08
from minideeplab.grading.checks.ablate import *  # noqa: F403  notebook 09
from minideeplab.grading.checks.separable import *  # noqa: F403  notebook 10
from minideeplab.grading.checks.attention import *  # noqa: F403  notebook 11
from minideeplab.grading.checks.crf_layer import *  # noqa: F403  notebook 12
