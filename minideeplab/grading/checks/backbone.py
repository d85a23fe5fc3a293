"""Checks for notebook 03, dilated backbones and output stride: exercises 3.x (not written yet)."""

__all__: list[str] = []
