"""The package's shape: no import cycle, and no import from a lower layer up."""

import ast
import pathlib

import adafilter_keras

PACKAGE = pathlib.Path(adafilter_keras.__file__).parent
# Lowest first; a module may import its own layer and those below it. The package's
# `__init__` (the public API) sits above everything it re-exports.
LAYERS = (
    {"validation", "console", "version", "network", "statistics"},
    {"layers"},
    {"backbones"},
    {"data"},
    {"wrapping"},
    {"inspection"},
    {"training"},
    {"transfer", "tuning"},
    {"quickstart"},
    {"cli", "__main__"},
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
TOP = len(LAYERS)


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path, modules):
    """The package modules `path` imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from a.b import c` imports `a.b.c` when it is a module, else a name of `a.b`.
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in modules
                else node.module
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def _rank(module):
    parts = module.split(".")
    if len(parts) == 1:
        return TOP  # adafilter_keras itself: the public API
    return RANK[parts[1]]


def test_every_module_has_a_declared_layer():
    unknown = {m.split(".")[1] for m in _modules() if "." in m} - set(RANK)
    assert not unknown, f"add {sorted(unknown)} to LAYERS in tests/test_structure.py"


def test_no_module_imports_from_a_higher_layer():
    modules = _modules()
    upward = [
        f"{module} imports {target}"
        for module, path in modules.items()
        for target in sorted(_imports(path, modules))
        if _rank(target) > _rank(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    modules = _modules()
    graph = {module: _imports(path, modules) - {module} for module, path in modules.items()}
    # A package's `__init__` importing its own submodules is how a package exports them, and
    # those submodules load it first in any case: only edges into a package from outside it count.
    for module in graph:
        graph[module] = {
            target
            for target in graph[module]
            if not (target != module and module.startswith(target + "."))
        }
    cycles, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)
