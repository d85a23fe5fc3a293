"""Checks for notebook 06, backpropagation through DeepLab: exercises 6.x (not written yet)."""

__all__: list[str] = []
