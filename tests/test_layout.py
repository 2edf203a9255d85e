"""The layout's rules: the package's modules import one way, down a stack of layers, with no cycle; the model
layer needs only torch, numpy, faiss and triton (the last two optional); and the library never imports the experiments."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "memorizing_transformers_pytorch"
NAME = PACKAGE.name

# lowest first: a module may import modules of its own layer or of a layer below, never above
LAYERS = {
    "model": ["config", "configs", "search_kernels", "search", "memory", "positions", "masks", "xl_cache", "knn_attention", "segment", "token_shift",
              "attention", "model", "generation"],
    "data": ["tokenizer", "shards", "data", "copy_warmup", "longbench.tasks", "longbench.score"],
    "training": ["run_folder", "distributed", "checkpoint", "evaluate", "train_config", "train"],
    "integrations": ["hf"],
    "applications": ["plots", "demo", "cli", "__main__", "longbench", "longbench.runner", "longbench.plot"],
}
LEVEL = {module: level for level, modules in enumerate(LAYERS.values()) for module in modules}
MODEL_LAYER_PACKAGES = {"torch", "numpy", "faiss", "triton"}  # beyond the standard library (faiss, triton: optional)


def module_names() -> list[str]:
    """Every module of the package, dotted from the package ("longbench.tasks"; a subpackage by its own name)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:  # the package's own __init__ is its façade: it re-exports, and is not a layer
            names.append(".".join(parts))
    return names


def module_path(name: str) -> Path:
    path = PACKAGE.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """The package modules ``name`` imports (at the top or inside functions), and the outside packages."""
    is_package = module_path(name).name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(module_path(name).read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                targets = [node.module or ""]
            else:
                base = here[: len(here) - (node.level - 1)]
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
                for alias in node.names:  # "from . import x": x may itself be a module
                    sub = f"{module}.{alias.name}" if module else alias.name
                    inside.add(sub if module_path(sub).exists() else module)
                continue
        else:
            continue
        for target in targets:
            if target.split(".")[0] == NAME:
                inside.add(".".join(target.split(".")[1:]) or "__init__")
            elif target:
                outside.add(target.split(".")[0])
    inside.discard("")
    return inside, outside


def graph() -> dict[str, set[str]]:
    return {name: imports_of(name)[0] - {name} for name in module_names()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports as a list of modules (first = last), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [f"{source} ({layer_of(source)}) imports {target} ({layer_of(target)})"
            for source, targets in sorted(edges.items()) for target in sorted(targets)
            if LEVEL[target] > LEVEL[source]]


def layer_of(name: str) -> str:
    return list(LAYERS)[LEVEL[name]]


def test_every_module_has_a_layer():
    assert sorted(module_names()) == sorted(LEVEL), "add the new module to LAYERS (or remove a deleted one)"


def test_modules_import_only_their_own_layer_and_the_layers_below():
    assert upward_imports(graph()) == []


def test_no_import_cycle():
    assert find_cycle(graph()) is None


def test_the_checks_catch_a_cycle_and_an_upward_import():
    """The checks themselves, on a made-up graph: a cycle, then an upward import."""
    edges = {"model": {"attention"}, "attention": {"segment"}, "segment": {"model"}, "cli": {"model"}}
    assert find_cycle(edges) == ["attention", "segment", "model", "attention"]
    assert find_cycle({"model": {"attention"}, "attention": set(), "cli": {"model"}}) is None
    assert upward_imports({"model": {"train"}, "train": set()}) == ["model (model) imports train (training)"]


@pytest.mark.parametrize("name", LAYERS["model"])
def test_the_model_layer_needs_only_torch_numpy_and_faiss(name):
    outside = imports_of(name)[1] - set(sys.stdlib_module_names) - {"__future__"}
    assert outside <= MODEL_LAYER_PACKAGES, f"{name} imports {sorted(outside - MODEL_LAYER_PACKAGES)}"


def test_no_core_module_imports_from_experiments():
    for name in module_names():
        outside = imports_of(name)[1]
        assert "experiments" not in outside and "benchmarks" not in outside, name


def test_importing_every_core_module_loads_no_experiment_code():
    code = ("import sys, importlib\n"
            f"for name in {[n for n in module_names() if n != '__main__']!r}: importlib.import_module('{NAME}.' + name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('experiments', 'benchmarks')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
