"""minideeplab precompile (run by make lab and make test): after it, a fresh process such as a notebook's
kernel finds every numba kernel the notebooks call in numba's cache and compiles nothing (issue 16: no slow
first run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A fresh process, as a notebook kernel: precompile() must only load from the cache that `minideeplab
# precompile` wrote in another process; then calls the way the notebooks make them (other shapes, rates and
# strides than precompile's) must compile nothing more.
CHECK = r"""
import inspect, json, re
import numpy as np
from minideeplab.scratch import atrous_fast, crf, layers
from minideeplab.scratch.precompile import kernels, precompile

counts = precompile(quiet=True)
# A kernel called only from other kernels is compiled with them (and loaded from the cache inside them).
sources = {name: inspect.getsource(k.py_func) for name, k in kernels().items()}
reached, grown = {name for name, k in kernels().items() if k.signatures}, True
while grown:
    callees = {name for name in kernels() for caller in reached
               if re.search(rf"\b{name.rsplit('.', 1)[1]}\(", sources[caller])}
    grown = not callees <= reached
    reached |= callees
unreached = sorted(set(kernels()) - reached)

rng = np.random.default_rng(1)
for dtype in (np.float32, np.float64):
    x = rng.standard_normal((2, 3, 13, 11)).astype(dtype)
    for rate, stride, groups, cout in ((1, 1, 1, 4), (6, 1, 1, 4), (2, 2, 1, 4), (12, 1, 3, 3), (2, 2, 3, 6)):
        w = rng.standard_normal((cout, 3 // groups, 3, 3)).astype(dtype)
        y = atrous_fast.atrous_conv2d(x, w, rng.standard_normal(cout).astype(dtype), rate, stride, "same", groups)
        atrous_fast.atrous_conv2d_backward(y, x, w, rate, stride, "same", groups)
        atrous_fast.conv2d_fused(x, w, np.ones(cout, dtype), np.zeros(cout, dtype), rate, stride, "same", groups,
                                 relu=True)
    layers.resize_bilinear_infer(x, (26, 22), align_corners=True)
probs = rng.dirichlet(np.ones(3), size=(9, 12)).transpose(2, 0, 1).astype(np.float32)
crf.dense_crf(probs, rng.integers(0, 256, (9, 12, 3), dtype=np.uint8), n_iters=2)

stats = {name: k.stats for name, k in kernels().items()}
print(json.dumps(dict(counts=counts, unreached=unreached,
                      misses={n: sorted(map(str, s.cache_misses)) for n, s in stats.items() if s.cache_misses})))
"""


def _run(args, **env):
    base = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    env = dict(base, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_after_precompile_a_fresh_process_compiles_no_kernel_the_notebooks_call():
    made = _run(["-m", "minideeplab", "precompile"])  # as make lab and make test do; seconds when the cache is warm
    assert made.returncode == 0, made.stderr
    assert "specialisations compiled" in made.stdout, made.stdout
    check = _run(["-c", CHECK])
    assert check.returncode == 0, check.stderr
    found = json.loads(check.stdout.strip().splitlines()[-1])
    assert found["counts"]["compiled"] == 0 and found["counts"]["loaded"] > 0, found  # the cache was found
    assert found["unreached"] == [], f"kernels neither precompiled nor called from one that is: {found}"
    assert found["misses"] == {}, f"compiled after precompile: {found['misses']}"


def test_every_scratch_module_with_a_kernel_is_precompiled():
    """KERNEL_MODULES (what precompile reports and the check above covers) names every scratch module that
    defines a numba kernel (read from the sources, so that it holds under NUMBA_DISABLE_JIT=1 too): a module left
    out would compile its kernels in the first notebook (or test) that calls them, unseen by the check."""
    import re

    from minideeplab import scratch
    from minideeplab.scratch.precompile import KERNEL_MODULES

    folder = Path(scratch.__file__).parent
    with_kernels = {f"minideeplab.scratch.{p.stem}" for p in folder.glob("*.py")
                    if re.search(r"^@(numba\.)?n?jit\b", p.read_text(), re.MULTILINE)}
    assert with_kernels and with_kernels == {m.__name__ for m in KERNEL_MODULES}


def test_precompile_does_nothing_without_the_jit():
    done = _run(["-m", "minideeplab", "precompile"], NUMBA_DISABLE_JIT="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "numba's JIT is disabled (NUMBA_DISABLE_JIT=1): nothing to compile"
