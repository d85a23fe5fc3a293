"""The set-up files agree with each other: pyproject, environment.yml, the lock, Makefile, CI, README."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _requirement(spec: str) -> tuple[str, str]:
    name, _, bound = re.match(r"^([A-Za-z0-9_.\-]+)\s*(>=\s*([\w.]+))?", spec.strip()).groups()
    return name.lower().replace("_", "-"), (bound or "").replace(">=", "").strip()


def _pyproject_requirements() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(meta["dependencies"])
    for extra in ("lab", "test"):
        specs += meta["optional-dependencies"][extra]
    return dict(_requirement(s) for s in specs)


def _environment_requirements() -> dict[str, str]:
    reqs, in_deps, in_pip = {}, False, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#")[0].rstrip()
        if re.match(r"^\w", stripped):
            in_deps = stripped == "dependencies:"
            continue
        if re.match(r"^\s*- pip:\s*$", stripped):
            in_pip = True
            continue
        m = re.match(r"^  - (\S.*)$", stripped) or (in_pip and re.match(r"^      - (\S.*)$", stripped))
        if m and in_deps and m.group(1) != "-e .":
            name, bound = _requirement(m.group(1))
            if name not in ("python", "pip"):
                reqs[CONDA_NAMES.get(name, name)] = bound
    return reqs


def test_environment_yml_matches_pyproject():
    env, py = _environment_requirements(), _pyproject_requirements()
    assert env == py, (f"environment.yml and pyproject.toml disagree.\n only in environment.yml: "
                       f"{ {k: v for k, v in env.items() if py.get(k) != v} }\n only in pyproject: "
                       f"{ {k: v for k, v in py.items() if env.get(k) != v} }")


def test_environment_yml_is_conda_forge_only_and_installs_the_package():
    text = (ROOT / "environment.yml").read_text()
    channels = re.search(r"channels:\n((?:\s+- .*\n)+)", text).group(1).split()
    assert [c for c in channels if c != "-"] == ["conda-forge"]
    assert re.search(r"- pip:\n(\s+- .*\n)*\s+- -e \.", text), "environment.yml must pip-install the package editable"


def test_pyproject_declares_lower_bounds_only():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in meta["dependencies"] + sum(meta["optional-dependencies"].values(), []):
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+>=[\w.]+", spec), f"not a plain lower bound: {spec!r}"


def test_lock_pins_the_local_torch_builds_exactly():
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lock if "==" in line and not line.startswith("#"))
    assert pins.get("torch") == "2.14.1" and pins.get("torchvision") == "0.29.1"
    unpinned = [line for line in lock if line.strip() and not line.startswith("#") and "==" not in line]
    assert not unpinned, f"every line of requirements.lock must be an exact pin: {unpinned}"
    for name in _pyproject_requirements():
        assert name in {k.lower().replace("_", "-") for k in pins}, f"{name} is not in requirements.lock"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make lab", "make test"], "the README must open with exactly the two set-up commands"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert "make test" in ci


@pytest.mark.parametrize("args", [[], ["course"], ["course", "build"], ["course", "tidy"],
                                  ["grade"], ["bench"], ["bench", "atrous"], ["train"], ["eval"], ["segment"],
                                  ["ablate"], ["precompile"]])
def test_every_subcommand_has_help(args):
    out = subprocess.run([sys.executable, "-m", "minideeplab", *args, "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: minideeplab")
    assert len(out.stdout.splitlines()) > 3
