"""The package's layers hold and its modules import each other without cycles
(``doc/design.md``, "Layers").

Imports are read with ``ast``, in every form: ``import xcos``, ``import xcos.a.b``,
``from xcos import registry``, ``from xcos.a import b``, relative imports, and imports inside
functions (they run too, only later). An import names the module it loads: ``from xcos.a import
b`` is an import of the module ``xcos.a.b`` when there is one, else of the package ``xcos.a``.
The parent packages Python loads on the way are not counted: every module would otherwise
import ``xcos/__init__.py``, and that one imports the public API lazily from the top layer.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "xcos"

#: Bottom to top; a unit may import from any unit of its own layer or of a lower one.
LAYERS = [
    {"errors"},
    {"config_types", "registry", "io_utils", "checkpoints", "runtime", "distributed", "cache"}
    | {"progress"}
    | {"version"},
    {"config"},
    {"data", "models", "losses"},
    {"evaluation"},
    {"explain"},
    {"engine"},
    {"recipes"},
    {"serve"},
    {"cli", "__main__", "__init__"},
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}

Graph = dict[str, set[str]]


def module_name(relative: str) -> str:
    """``data/pack.py`` -> ``xcos.data.pack``; ``data/__init__.py`` -> ``xcos.data``."""
    parts = ("xcos", *Path(relative).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The top-level module or sub-package of xcos that ``module`` belongs to; the package's
    own ``__init__`` is the unit ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(relative: str, source: str, modules: set[str]) -> set[str]:
    """The xcos modules that the file ``relative`` (under ``src/xcos``) imports, anywhere in it.

    ``modules`` are the names of all modules, which tell ``from xcos.a import b`` for a module
    ``b`` from ``from xcos.a import name`` for a name defined in ``xcos.a``.
    """
    module = module_name(relative)
    package = module if Path(relative).name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source, relative)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if is_xcos(alias.name)}
        elif isinstance(node, ast.ImportFrom):
            base = resolve(package, node.module, node.level)
            if is_xcos(base):
                named = (f"{base}.{alias.name}" for alias in node.names)
                found |= {name if name in modules else base for name in named}
    return found


def is_xcos(name: str) -> bool:
    return name.split(".")[0] == "xcos"


def resolve(package: str, module: str | None, level: int) -> str:
    """The absolute name of ``from <level dots><module> import ...`` inside ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    anchor = parts[: len(parts) - level + 1]
    return ".".join([*anchor, module] if module else anchor)


def import_graph(sources: dict[str, str]) -> Graph:
    """Module -> the xcos modules it imports, of files given as {path under src/xcos: text}."""
    modules = {module_name(relative) for relative in sources}
    return {
        module_name(relative): imported_modules(relative, text, modules)
        for relative, text in sources.items()
    }


def upward_imports(graph: Graph) -> list[str]:
    return [
        f"{module} (layer {LEVEL[unit_of(module)]}) imports {target} "
        f"(layer {LEVEL[unit_of(target)]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if LEVEL[unit_of(target)] > LEVEL[unit_of(module)]
    ]


def import_cycles(graph: Graph) -> dict[tuple[str, ...], str]:
    """Each set of modules that import one another in a circle (a strongly connected
    component of more than one module), sorted, with one such circle written out."""
    return {
        tuple(sorted(members)): " -> ".join(a_cycle(graph, min(members), members))
        for members in strongly_connected(graph)
        if len(members) > 1 or next(iter(members)) in graph[next(iter(members))]
    }


def strongly_connected(graph: Graph) -> list[set[str]]:
    """Tarjan's strongly connected components of ``graph`` (imports of unknown modules are
    left out)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in graph[module] & graph.keys():
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            component = set()
            while not component or module not in component:
                component.add(stack.pop())
            components.append(component)

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return components


def a_cycle(graph: Graph, start: str, members: set[str]) -> list[str]:
    """A shortest circle of imports from ``start`` back to it, within ``members``."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for target in sorted(graph[module] & members):
            if target == start:
                path = [module]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target not in came_from:
                came_from[target] = module
                queue.append(target)
    raise ValueError(f"{start} is on no cycle")


def package_sources() -> dict[str, str]:
    return {
        str(path.relative_to(PACKAGE)): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_every_unit_has_a_layer():
    units = {unit_of(module) for module in import_graph(package_sources())}
    assert units == set(LEVEL), "a new module or package needs its place in LAYERS"


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports(import_graph(package_sources())) == []


def test_no_module_imports_itself_back():
    cycles = import_cycles(import_graph(package_sources()))
    assert list(cycles.values()) == []


def test_every_form_of_import_is_read():
    fake = """
import numpy
from typing import Any
import xcos
import xcos.engine.trainer as trainer
from xcos import registry, Verifier
from xcos.models import geometry
from xcos.evaluation.roc import roc_curve
from . import images
from .pack import read_pack
from ..explain import figures


def later():
    import xcos.serve
"""
    modules = {module_name(name) for name in ("engine/trainer.py", "registry.py")}
    modules |= {"xcos.models.geometry", "xcos.data.images", "xcos.explain.figures"}
    assert imported_modules("data/fake.py", fake, modules) == {
        "xcos",  # `import xcos`, and `from xcos import Verifier`: not a module, a name
        "xcos.engine.trainer",
        "xcos.registry",
        "xcos.models.geometry",
        "xcos.evaluation.roc",
        "xcos.data.images",
        "xcos.data.pack",
        "xcos.explain.figures",
        "xcos.serve",
    }


def test_relative_imports_of_a_package_start_from_the_package_itself():
    modules = {"xcos.data", "xcos.data.pack", "xcos.models"}
    source = "from . import pack\nfrom .. import models\n"
    assert imported_modules("data/__init__.py", source, modules) == {
        "xcos.data.pack",
        "xcos.models",
    }


def test_an_upward_import_is_reported():
    fake = {
        "errors.py": "from xcos import registry\n",
        "registry.py": "",
        "version.py": "def find():\n    import xcos\n",
        "__init__.py": "",
        "data/fake.py": "def f():\n    from xcos.engine.trainer import Trainer\n",
        "engine/trainer.py": "from xcos.data.fake import f\n",  # downwards: fine
    }
    assert upward_imports(import_graph(fake)) == [
        "xcos.data.fake (layer 3) imports xcos.engine.trainer (layer 6)",
        "xcos.errors (layer 0) imports xcos.registry (layer 1)",
        "xcos.version (layer 1) imports xcos (layer 9)",
    ]


def test_a_cycle_is_reported_with_one_circle_written_out():
    fake = {
        "data/pack.py": "from xcos.data.pair_sets import PairSet\n",
        "data/pair_sets.py": "def load():\n    from xcos.data.prepare import cached_pack\n",
        "data/prepare.py": "from xcos.data import pack\n",
        "data/images.py": "",
        "models/a.py": "from xcos.data import images\nfrom xcos.models.b import B\n",
        "models/b.py": "from . import a\n",
    }
    assert import_cycles(import_graph(fake)) == {
        ("xcos.data.pack", "xcos.data.pair_sets", "xcos.data.prepare"): (
            "xcos.data.pack -> xcos.data.pair_sets -> xcos.data.prepare -> xcos.data.pack"
        ),
        ("xcos.models.a", "xcos.models.b"): "xcos.models.a -> xcos.models.b -> xcos.models.a",
    }
    del fake["models/b.py"]
    fake["data/prepare.py"] = ""
    assert import_cycles(import_graph(fake)) == {}
