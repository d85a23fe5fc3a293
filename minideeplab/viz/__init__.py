"""Figures and widgets for the notebooks (every widget also has a static figure)."""
