"""Checks for notebook 05, DeepLabv3+: exercises 5.x (not written yet)."""

__all__: list[str] = []
