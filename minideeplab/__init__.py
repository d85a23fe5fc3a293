"""minideeplab: learn DeepLab by building it.

- ``minideeplab.scratch``: NumPy + numba implementations, written from scratch.
- ``minideeplab.reference``: PyTorch twins of the same functions (same module names).
- ``minideeplab.grading``: exercise checks, course build and grading.
- ``minideeplab.viz``: figures and widgets for the notebooks.
"""

__version__ = "0.1.0"
