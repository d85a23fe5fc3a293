"""scratch.runtime: glibc keeps freed memory, so an array allocated again touches no fresh pages; OpenMP waits
passively unless the environment says otherwise."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import resource
    import numpy as np
    import minideeplab.scratch  # noqa: F401  (its import sets the thresholds)
    from minideeplab.scratch.runtime import keep_freed_memory
    def call():  # a transformer block's temporaries (MB), allocated, touched and freed as its forward does
        kept = [np.ones(int(mb * 2**20) // 8) for mb in (1.2, 1.2, 3.6, 1.2, 3.7, 1.2, 1.2, 1.2, 4.8, 4.8, 1.2)]
        del kept
    call()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        call()
    print(keep_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _run(env_value):
    env = dict(os.environ)
    env.pop("MINIDEEPLAB_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["MINIDEEPLAB_KEEP_FREED_MEMORY"] = env_value
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    took, faults = res.stdout.split()
    return took == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="mallopt is glibc's")
def test_freed_memory_is_reused_and_the_switch_turns_it_off():
    took, faults = _run(None)
    assert took and faults < 100, f"a block's 24 MB of temporaries 5 times over: {faults} page faults"
    took, faults = _run("0")  # glibc's own thresholds: the pages go back and come again (about 4,400 a call here)
    assert not took and faults > 5000, f"with MINIDEEPLAB_KEEP_FREED_MEMORY=0 only {faults} faults"


@pytest.mark.parametrize("given, want", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_waits_passively_unless_the_environment_says(given, want):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    script = "import os, minideeplab.scratch; print(os.environ['OMP_WAIT_POLICY'])"
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == want


def test_a_benchmark_side_runs_under_the_scratch_cores_settings(monkeypatch):
    from minideeplab.bench.atrous import child_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = child_env(3)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        assert env[var] == "3", var
