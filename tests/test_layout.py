"""The layout's one rule: the library never imports the experiments."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "memorizing_transformers_pytorch"


def test_no_core_module_imports_from_experiments():
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "experiments" for name in names), f"{path.name} imports {names}"


def test_importing_every_core_module_loads_no_experiment_code():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    code = ("import sys, importlib\n"
            f"for name in {modules!r}: importlib.import_module('memorizing_transformers_pytorch.' + name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'experiments'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
