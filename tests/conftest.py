"""Fixtures shared by the model tests (backbone, aspp, deeplab, interop); the course's graders started early.

``make test`` runs the suite on two pytest-xdist workers (``-n 2 --dist loadfile``: a file's tests stay in one
process, so its module fixtures run once). The graders of tests/test_course.py run beside them as two more
processes, started by the controller as soon as the tests are collected (by the only process without xdist);
their outputs go to files, and test_course.py, ordered last, reads them wherever it runs.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from helpers import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
GRADED_FOLDERS = ("solutions", "course")
COURSE_TESTS = "tests/test_course.py"
_GRADERS_KEY = "minideeplab_graders"
_state = {"dir": None, "procs": {}}  # this process's graders: their folder of outputs, {folder: Popen}

# Runs `minideeplab grade` and writes its exit code last (to a temporary name, then renamed), so a reader that
# sees FOLDER.rc also sees the whole FOLDER.out and FOLDER.err.
_WRAPPER = """import os, subprocess, sys
out_dir, folder = sys.argv[1], sys.argv[2]
with open(os.path.join(out_dir, folder + ".out"), "w") as out, open(os.path.join(out_dir, folder + ".err"), "w") as err:
    code = subprocess.call(sys.argv[3:], stdout=out, stderr=err)
with open(os.path.join(out_dir, folder + ".rc.tmp"), "w") as f:
    f.write(str(code))
os.replace(os.path.join(out_dir, folder + ".rc.tmp"), os.path.join(out_dir, folder + ".rc"))
"""


@pytest.fixture(scope="module")
def one_torch_thread():
    """The model tests' layers are small: torch's thread pool spinning beside OpenBLAS's on 2 shared cores
    made the torch twins 5-20x slower than the scratch code (measured). One torch thread, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def start_graders():
    """Start `minideeplab grade` over solutions/ and over course/ (once per process), outputs to files."""
    if _state["procs"]:
        return
    for folder in GRADED_FOLDERS:
        cmd = [sys.executable, "-c", _WRAPPER, _state["dir"], folder,
               sys.executable, "-m", "minideeplab", "grade", *(str(ROOT / folder / nb) for nb in NOTEBOOKS)]
        _state["procs"][folder] = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="session")
def graders_results(request):
    """{folder: CompletedProcess of `minideeplab grade` over its notebooks}: waits for the graders' files."""
    config, timeout = request.config, 1200
    out_dir = Path(config.workerinput[_GRADERS_KEY]) if hasattr(config, "workerinput") else Path(_state["dir"])
    if not hasattr(config, "workerinput"):
        start_graders()  # without xdist: started at collection; here only if that hook did not run
    deadline = time.monotonic() + timeout
    while not all((out_dir / f"{folder}.rc").exists() for folder in GRADED_FOLDERS):
        if time.monotonic() > deadline:
            pytest.fail(f"the graders did not finish in {timeout} s (outputs in {out_dir})")
        time.sleep(0.5)
    return {folder: subprocess.CompletedProcess(["minideeplab", "grade", folder],
                                                int((out_dir / f"{folder}.rc").read_text()),
                                                (out_dir / f"{folder}.out").read_text(),
                                                (out_dir / f"{folder}.err").read_text())
            for folder in GRADED_FOLDERS}


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller, or the only process
        _state["dir"] = tempfile.mkdtemp(prefix="minideeplab-graders-")
    else:
        _one_thread()


def _one_thread():
    """An xdist worker computes on one thread (torch, numba, BLAS): two workers and two graders already share
    the two cores, and a thread pool on a shared core waits for its slowest thread. The tests of the threaded
    kernels name their thread counts (test_atrous: 1 and 3 threads give the same bits; test_crf: 1 and all)."""
    import numba
    import threadpoolctl

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    threadpoolctl.threadpool_limits(1)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist controller: tell each worker where the graders write."""
    node.workerinput[_GRADERS_KEY] = _state["dir"]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """xdist controller: the first worker's collection says whether test_course.py runs."""
    if not node.config.option.collectonly and any(i.startswith(COURSE_TESTS + "::") for i in ids):
        start_graders()


def pytest_collection_modifyitems(session, config, items):
    """test_course.py last: it waits for the graders, which have by then had the whole suite's time."""
    items.sort(key=lambda item: item.nodeid.startswith(COURSE_TESTS + "::"))


def pytest_collection_finish(session):
    """Without xdist, this process starts the graders when test_course.py is selected."""
    config = session.config
    if config.option.collectonly:
        return
    worker = hasattr(config, "workerinput")
    controller = config.pluginmanager.hasplugin("dsession")
    if not worker and not controller and any(i.nodeid.startswith(COURSE_TESTS + "::") for i in session.items):
        start_graders()


def pytest_unconfigure(config):
    """Kill graders still running (a session that stopped before test_course.py ran: -x, Ctrl-C)."""
    for proc in _state["procs"].values():
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    _state["procs"].clear()
    if _state["dir"] and not hasattr(config, "workerinput"):
        shutil.rmtree(_state["dir"], ignore_errors=True)
