"""The package layout holds: every module imports on its own, inference code (models,
evaluation) pulls in nothing from training, no two modules import each other (directly or
in a ring), and no module grows past the size a reader takes in at once."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "capsv"
MAX_LINES = 520          # "about 500": a module past this wants splitting
STANDALONE = {"capsv.onnx_verify"}     # copied next to exported graphs; imports only numpy/ort


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _imported_by_importing(module: str) -> list[str]:
    """The capsv modules that ``import module`` loads, in a fresh interpreter."""
    code = (f"import json, sys; import {module}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('capsv'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("package", ["capsv.models", "capsv.evaluation", "capsv.api",
                                     "capsv.export", "capsv.data", "capsv.prep"])
def test_inference_and_data_code_imports_nothing_from_training(package):
    loaded = _imported_by_importing(package)
    assert package in loaded
    assert not [m for m in loaded if m == "capsv.train" or m.startswith("capsv.train.")]


def test_the_whole_evaluation_package_imports_nothing_from_training():
    every = [m for m in MODULES if m.startswith(("capsv.evaluation", "capsv.models"))]
    code = ("import importlib, json, sys\n"
            f"for m in {every!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('capsv.train'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == []


def _imports_of(path: Path, module: str) -> set[str]:
    """capsv modules named by the import statements of ``path`` (at any depth: a lazy import
    inside a function still ties the two modules together)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("capsv")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("capsv"):
                continue
            # "from pkg import submodule" names the submodule itself
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            found |= set(subs) if subs and len(subs) == len(node.names) else {target} | set(subs)
    # A module reading its own package's attribute (``from .. import __version__``) is not a
    # ring: the package is initialised before any of its modules.
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return found - {module} - ancestors


def test_no_import_cycles():
    """No ring of imports between modules, lazy ones included (training and its distributed
    part once imported each other)."""
    graph = {m: _imports_of(SRC / (m.replace(".", "/") + ".py") if (SRC / (m.replace(".", "/") + ".py")).exists()
                            else SRC / m.replace(".", "/") / "__init__.py", m) for m in MODULES}
    cycles = []

    def visit(node, stack, seen):
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, stack + [nxt], seen)

    for start in MODULES:
        visit(start, [start], {start})
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_every_module_imports_on_its_own():
    code = ("import importlib\n"
            f"for m in {sorted(set(MODULES) - STANDALONE)!r}: importlib.import_module(m)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]


def test_no_module_is_too_long():
    long = {m: n for m in MODULES
            if (n := len((SRC / (m.replace(".", "/") + ".py")).read_text().splitlines()
                         if (SRC / (m.replace(".", "/") + ".py")).exists() else [])) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# Where the numbers may appear as something else: the stand-alone ONNX script (no capsv
# imports, by design) checks the rate itself; the voice model's fricatives have a 350 Hz formant.
NOT_THE_PROTOCOL = {"capsv/onnx_verify.py": (16000,), "capsv/prep/synth/voice.py": (350,)}


def test_the_protocol_numbers_are_spelled_in_one_place():
    """350 frames (the paper's crop) and 16000 Hz live in capsv.protocol; elsewhere only in
    help text (commands/) and docstrings."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(SRC).as_posix()
        if path.name == "protocol.py" or path.parent.name == "commands":
            continue          # protocol: the definition; commands: --help text
        allowed = NOT_THE_PROTOCOL.get(name, ())
        tree = ast.parse(path.read_text())
        offenders += [f"{name}:{n.lineno}" for n in ast.walk(tree)
                      if isinstance(n, ast.Constant) and type(n.value) is int
                      and n.value in (350, 16000) and n.value not in allowed]
    assert not offenders, offenders
