"""Checks for notebook 04, ASPP: exercises 4.x (not written yet)."""

__all__: list[str] = []
