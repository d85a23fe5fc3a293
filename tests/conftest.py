"""Fixtures shared by the model tests (backbone, aspp, deeplab, interop); the course's graders started early."""

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


def _course_module(session):
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.endswith("test_course") and hasattr(module, "start_graders"):
            return module
    return None


def pytest_collection_finish(session):
    """When tests/test_course.py is selected, its graders start now and run beside the other tests."""
    module = _course_module(session)
    if module is not None:
        module.start_graders()


def pytest_sessionfinish(session):
    module = _course_module(session)
    if module is not None:
        module.stop_graders()
