"""Data for the course: photographs with labels (``photos``)."""
