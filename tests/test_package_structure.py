"""The package's architecture, read off its imports: layers that import downwards only.

Every `import` of a `dss_keras` module counts, the ones inside functions too.
"""

import ast
import collections
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dss_keras")

# Each module (or package, for all its modules) and its layer; a module imports its own
# layer and the ones below it, never one above.
LAYERS = {
    # 0: settings, files, and the parts that know nothing of the rest of the package.
    "config": 0, "files": 0, "quiet": 0, "interrupts": 0, "optimizers": 0, "decoding": 0, "metrics": 0,
    "tf_fast_path": 0, "objective": 0, "generation": 0,
    # 1: records and what turns them into tensors; training state on disk.
    "data": 1, "vocabulary": 1, "preprocessor": 1, "backup": 1, "run_lock": 1, "strategies": 1,
    # 2: the model and what wraps or serves it; the teacher.
    "backbones": 2, "model": 2, "evaluation": 2, "export": 2, "run_dir": 2, "teacher": 2,
    "hf_t5": 2,  # transformers T5 checkpoints in (for backbones) and out (beside export)
    "export_precision": 2, "label_scorer": 2, "serving_module": 2,
    # 3: the one path from a config to a trained run; fixtures for examples and tests.
    "training": 3, "testing": 3,
    # 4: what runs many trainings: benchmark experiments, the quickstart, the tuner.
    "experiments": 4, "quickstart": 4, "tuning": 4,
    # 5: the command line.
    "cli": 5,
}


def _modules() -> dict[str, str]:
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                name = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".")
                modules[name.removesuffix(".__init__")] = path
    return modules


def _imports() -> dict[str, set[str]]:
    """Each module -> the `dss_keras` modules it imports (the top package's lazy __init__ aside)."""
    modules = _modules()

    def known(name):
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = collections.defaultdict(set)
    for name, path in modules.items():
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("dss_keras.") and known(target) not in (name, "dss_keras"):
                    graph[name].add(known(target))
    return graph


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[1]]


def test_every_module_has_a_layer():
    unknown = sorted({name.split(".")[1] for name in _modules() if "." in name} - set(LAYERS))
    assert unknown == []


def test_imports_run_downwards_only():
    upwards = [f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
               for module, targets in _imports().items() for target in targets
               if _layer(target) > _layer(module)]
    assert upwards == []


def test_no_module_imports_the_package_it_is_in():
    """A package's `__init__` gathers its modules; they never import it back."""
    modules = _modules()
    back = [f"{module} imports {target}" for module, targets in _imports().items()
            for target in targets
            if module.startswith(target + ".") and modules[target].endswith("__init__.py")]
    assert back == []


def test_the_fast_path_imports_nothing_of_the_package_outside_it():
    outside = [f"{module} imports {target}" for module, targets in _imports().items()
               if module.startswith("dss_keras.tf_fast_path") for target in targets
               if not target.startswith("dss_keras.tf_fast_path")]
    assert outside == []


def test_no_import_cycle():
    graph = _imports()
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(_modules()):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("module", ["config", "quiet", "interrupts", "tf_fast_path.cpu_runtime",
                                    "quickstart", "cli"])
def test_light_modules_import_no_tensorflow(module):
    """The command line parses its flags, and quiets TensorFlow, before TensorFlow loads."""
    import subprocess
    import sys

    code = (f"import sys, dss_keras.{module}; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               cwd=os.path.dirname(PACKAGE), timeout=120)
    assert completed.stdout.strip() == "[]", completed.stderr[-2000:]
