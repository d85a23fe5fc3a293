"""Benchmarks: scratch against the PyTorch reference, same run, same thread count."""
