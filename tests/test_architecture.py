"""The package's structure, as ARCHITECTURE.md states it: layers that import only downwards (an import inside a
function counts), no import cycle between modules, scratch free of torch and of the layers above it, and no
private scratch name used outside scratch/. Read from the source with ``ast``: nothing is imported."""

import ast
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
PACKAGE = ROOT / "minideeplab"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _imports(path: Path, module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every minideeplab import in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub, None, node.lineno) if sub in MODULES else (base, a.name, node.lineno))
    return [f for f in found if f[0] == "minideeplab" or f[0].startswith(("minideeplab.", "torch"))]


def _layers() -> list[list[str]]:
    """The layer table of ARCHITECTURE.md: the fenced block after "## Layers", one layer a line, bottom first,
    "N  name name ..." (names below minideeplab)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    block = re.search(r"## Layers.*?```text\n(.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md has no ```text block of layers under '## Layers'"
    rows = [line.split() for line in block.group(1).splitlines() if re.match(r"\s*\d+\s", line)]
    return [[f"minideeplab.{n}" for n in row[1:] if not n.startswith("(")] for row in rows]


LAYERS = _layers()


def _layer(module: str) -> int | None:
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > len(best[1])):
                best = (i, n)
    return None if best is None else best[0]


def _is_reexport(module: str) -> bool:
    """A package __init__ that only imports (and sets __all__ / a docstring)."""
    path = MODULES[module]
    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, (ast.Import, ast.ImportFrom, ast.Expr)) or
               (isinstance(n, ast.Assign) and all(isinstance(t, ast.Name) and t.id.startswith("__")
                                                  for t in n.targets)) for n in body)


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m != "minideeplab" and _layer(m) is None]
    assert not missing, f"modules in no layer of ARCHITECTURE.md: {missing}"


def test_imports_go_only_downwards():
    wrong = []
    for module, path in MODULES.items():
        if module == "minideeplab":
            continue
        mine = _layer(module)
        for target, _, line in _imports(path, module):
            if target.startswith("torch") or target == "minideeplab":
                continue
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                wrong.append(f"{_rel(path)}:{line} ({module}, layer {mine}) imports {target} "
                             f"(layer {theirs})")
    assert not wrong, "imports that go up:\n" + "\n".join(dict.fromkeys(wrong))


def test_no_import_cycles():
    graph = defaultdict(set)
    for module, path in MODULES.items():
        if _is_reexport(module):
            continue
        for target, _, _ in _imports(path, module):
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target in MODULES and target != module and not _is_reexport(target):
                graph[module].add(target)
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_scratch_is_numpy_and_numba_only():
    above = ("train", "training", "reference", "interop", "bench", "viz", "grading", "ablate", "cli")
    wrong = []
    for module, path in MODULES.items():
        if not module.startswith("minideeplab.scratch"):
            continue
        for target, _, line in _imports(path, module):
            if target.split(".")[0] == "torch" or target.split(".")[1:2] and target.split(".")[1] in above:
                wrong.append(f"{_rel(path)}:{line} imports {target}")
    assert not wrong, "\n".join(dict.fromkeys(wrong))


def _scratch_bindings(tree) -> dict[str, str]:
    """local name -> the scratch module (or package) it is bound to by an import."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("minideeplab.scratch"):
                    out[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minideeplab"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full.startswith("minideeplab.scratch") and full in MODULES:
                    out[a.asname or a.name] = full
    return out


def _private_uses(path: Path, module: str) -> list[str]:
    tree = ast.parse(path.read_text())
    uses = []
    for target, name, line in _imports(path, module):
        if target.startswith("minideeplab.scratch"):
            if any(part.startswith("_") for part in target.split(".")) or (name or "").startswith("_"):
                uses.append(f"{_rel(path)}:{line} imports {target}{'.' + name if name else ''}")
    bound = _scratch_bindings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            chain = []
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                uses.append(f"{_rel(path)}:{node.lineno} uses "
                            f"{'.'.join([bound[base.id]] + chain[::-1] + [node.attr])}")
    return uses


def _notebook_code(path: Path, tmp_path: Path) -> Path:
    """The code cells of a notebook as one Python file (IPython's % and ! lines left out)."""
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    out = tmp_path / f"{path.stem}.py"
    out.write_text("\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return out


def test_no_private_scratch_name_outside_scratch(tmp_path):
    files = [(m, p) for m, p in MODULES.items() if not m.startswith("minideeplab.scratch")]
    files += [(f"tests.{p.stem}", p) for p in sorted((ROOT / "tests").glob("*.py"))]
    files += [(f"notebook.{p.stem}", _notebook_code(p, tmp_path)) for p in sorted((ROOT / "solutions").glob("*.ipynb"))]
    uses = [u for m, p in files for u in _private_uses(p, m)]
    assert not uses, "private scratch names used outside minideeplab/scratch:\n" + "\n".join(uses)


@pytest.mark.parametrize("code, expected", [
    ("from minideeplab.scratch._kernels import blur\n", "imports minideeplab.scratch._kernels.blur"),
    ("from minideeplab.scratch.deeplab import _check_config\n", "imports minideeplab.scratch.deeplab._check_config"),
    ("from minideeplab import scratch\nscratch.deeplab._sub({}, 'a')\n", "uses minideeplab.scratch.deeplab._sub"),
    ("import minideeplab.scratch.layers as L\nL._cache\n", "uses minideeplab.scratch.layers._cache"),
])
def test_the_private_name_check_finds_them(tmp_path, code, expected):
    path = tmp_path / "probe.py"
    path.write_text(code)
    uses = _private_uses(path, "probe")
    assert len(uses) == 1 and expected in uses[0]


def test_the_layer_check_sees_an_import_inside_a_function(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from minideeplab.grading import checks\n")
    assert _imports(path, "minideeplab.scratch.probe") == [("minideeplab.grading.checks", None, 2)]
    assert _layer("minideeplab.grading.checks") > _layer("minideeplab.scratch.atrous")
