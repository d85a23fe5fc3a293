"""From-scratch implementations in NumPy + numba. Each module has a PyTorch twin in
``minideeplab.reference`` with the same name."""
