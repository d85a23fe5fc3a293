"""PyTorch reference implementations, module by module the twins of ``minideeplab.scratch``."""
