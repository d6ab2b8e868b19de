"""The version is written in one place, ``src/xcos/version.py``; the build, ``xcos.__version__``
and ``xcos --version`` all read it from there."""

import ast

from setuptools.config.pyprojecttoml import read_configuration

import xcos
from tests.conftest import REPO
from xcos.version import __version__, package_version

PYPROJECT = REPO / "pyproject.toml"


def version_assignments(source: str) -> list[int]:
    """Lines of ``source`` that assign ``__version__`` (at any depth)."""
    targets = (
        (node.lineno, target)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
    )
    return [line for line, target in targets if getattr(target, "id", None) == "__version__"]


def test_version_is_assigned_in_version_py_only():
    found = {
        str(path.relative_to(REPO)): lines
        for path in sorted((REPO / "src" / "xcos").rglob("*.py"))
        if (lines := version_assignments(path.read_text()))
    }
    assert list(found) == ["src/xcos/version.py"], found


def test_a_second_assignment_would_be_seen():
    assert version_assignments('__version__ = "1"\nif x:\n    __version__: str = "2"\n') == [1, 3]
    assert version_assignments("from xcos.version import __version__ as __version__\n") == []


def test_the_build_reads_the_version_from_version_py():
    project = read_configuration(PYPROJECT, expand=False)  # tomllib is Python 3.11+
    assert "version" not in project["project"], "pyproject.toml writes the version a second time"
    assert project["project"]["dynamic"] == ["version"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "xcos.version.__version__"}
    assert read_configuration(PYPROJECT, expand=True)["project"]["version"] == __version__


def test_every_reader_reports_the_same_version():
    assert xcos.__version__ == package_version() == __version__
