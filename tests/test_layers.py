"""The package's layers hold: a module imports only from its own layer or the layers below it
(``doc/design.md``, "Layers"). Imports inside functions count too."""

from __future__ import annotations

import re
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
    {"cli", "cli_pack", "cli_recognizers", "cli_report", "cli_export", "cli_serve"}
    | {"cli_args"}
    | {"__main__", "__init__"},
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}
IMPORT = re.compile(r"^\s*(?:from|import)\s+xcos\.(\w+)", re.MULTILINE)


def unit_of(path: Path) -> str:
    """The top-level module or sub-package of xcos that ``path`` belongs to."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def upward_imports(sources: dict[Path, str]) -> list[str]:
    found = []
    for path, text in sources.items():
        unit = unit_of(path)
        for target in IMPORT.findall(text):
            if LEVEL[target] > LEVEL[unit]:
                found.append(f"{path.relative_to(PACKAGE)} imports xcos.{target}")
    return found


def package_sources() -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_unit_has_a_layer():
    units = {unit_of(path) for path in package_sources()}
    assert units == set(LEVEL), "a new module or package needs its place in LAYERS"


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports(package_sources()) == []


def test_an_upward_import_is_reported():
    fake = {PACKAGE / "data" / "fake.py": "def f():\n    from xcos.engine.trainer import Trainer\n"}
    assert upward_imports(fake) == ["data/fake.py imports xcos.engine"]
    fine = {PACKAGE / "engine" / "fake.py": "from xcos.data.images import read_rgb\n"}
    assert upward_imports(fine) == []
