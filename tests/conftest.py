"""Fixtures shared by the model tests (backbone, aspp, deeplab, interop)."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """The model tests' layers are small: torch's thread pool spinning beside OpenBLAS's on 2 shared cores
    made the torch twins 5-20x slower than the scratch code (measured). One torch thread, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
