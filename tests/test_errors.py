"""The error hierarchy (xcos.errors), the CLI's rule for it, and the one safe weights reader."""

from __future__ import annotations

import ast
import dataclasses
import os
import pickle
from pathlib import Path

import pytest
import torch

from tests.conftest import DEMO_CONFIG, REPO, MaliciousPayload
from xcos import errors
from xcos.checkpoints import read_checkpoint
from xcos.cli import main
from xcos.cli.program import COMMANDS
from xcos.errors import CheckpointError, CheckpointNotFoundError, XcosError

# (class name, the built-in base it had before xcos.errors existed)
PUBLIC_ERRORS = [
    ("ConfigError", ValueError),
    ("DataError", ValueError),
    ("BadImageError", ValueError),
    ("UnalignedImageError", ValueError),
    ("NonFiniteLossError", RuntimeError),
    ("DlibFormatError", ValueError),
    ("DlibWeightsNotFoundError", FileNotFoundError),
    ("CheckpointError", ValueError),
    ("CheckpointNotFoundError", FileNotFoundError),
    ("SetupError", RuntimeError),
]
#: Where Python code of the project lives, besides main.py.
SOURCES = ["src", "tests", "bench", "doc"]


@pytest.mark.parametrize(("name", "builtin"), PUBLIC_ERRORS)
def test_every_project_error_is_an_xcos_error(name, builtin):
    cls = getattr(errors, name)
    assert issubclass(cls, XcosError), f"xcos.errors.{name} is not an XcosError"
    assert issubclass(cls, builtin), f"xcos.errors.{name} lost its base {builtin.__name__}"


def error_imports_elsewhere(path: Path, text: str) -> list[str]:
    """Imports of an xcos.errors class from another module, and ``__all__`` entries that
    re-export one (the package root's public API may name them)."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module != "xcos.errors":
            found += [
                f"{path}:{node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if alias.name in errors.__all__
            ]
        targets = getattr(node, "targets", [])
        if any(getattr(t, "id", None) == "__all__" for t in targets) and path.name != "__init__.py":
            names = {getattr(item, "value", None) for item in getattr(node.value, "elts", [])}
            found += [f"{path}: __all__ names {n}" for n in sorted(names & set(errors.__all__))]
    return found


def test_every_error_is_imported_from_xcos_errors():
    """One path per error class: no module offers another module's errors."""
    paths = [p for root in SOURCES for p in sorted((REPO / root).rglob("*.py"))]
    paths.append(REPO / "main.py")
    assert len(paths) > 150  # the whole project, not an empty glob
    strays = [
        line
        for path in paths
        if path.name != "errors.py" or path.parent.name != "xcos"
        for line in error_imports_elsewhere(path.relative_to(REPO), path.read_text("utf-8"))
    ]
    assert not strays, f"import these from xcos.errors: {strays}"


def test_an_error_imported_from_elsewhere_is_reported():
    text = "from xcos.data.images import DataError, read_rgb\n__all__ = ['DataError']\n"
    assert error_imports_elsewhere(Path("m.py"), text) == [
        "m.py:1: from xcos.data.images import DataError",
        "m.py: __all__ names DataError",
    ]
    assert error_imports_elsewhere(Path("m.py"), "from xcos.errors import DataError\n") == []


def test_errors_are_defined_in_xcos_errors_only():
    """An exception class defined elsewhere in src/xcos would escape the CLI's rule."""
    strays = []
    for path in sorted((REPO / "src" / "xcos").rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "xcos":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                (getattr(base, "id", None) or getattr(base, "attr", "")).endswith(
                    ("Error", "Exception")
                )
                for base in node.bases
            ):
                strays.append(f"{path.relative_to(REPO)}: {node.name}")
    assert not strays, f"define these in xcos/errors.py: {strays}"


# ----------------------------------------------------------------------------- the CLI rule


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["test", "-tc", "missing.json"], "config file 'missing.json' does not exist"),
        (
            ["train", "-tc", str(DEMO_CONFIG), "--set", "trainer.epochs"],
            "expected dotted.key=value",
        ),
    ],
)
def test_an_xcos_error_is_one_line_with_status_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def failing_test_command(monkeypatch, run) -> None:
    """``xcos test`` runs ``run`` instead (its options and parser are left as they are)."""
    command = COMMANDS["test"]
    monkeypatch.setitem(COMMANDS, "test", dataclasses.replace(command, run=run))


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bug"),
        KeyError("bug"),
        RuntimeError("bug"),
        FileNotFoundError("bug"),
        TypeError("bug"),
    ],
)
def test_any_other_exception_is_a_bug_and_propagates(monkeypatch, error):
    def run(args):
        raise error

    failing_test_command(monkeypatch, run)
    with pytest.raises(type(error)) as raised:
        main(["test", "-tc", "missing.json"])
    assert raised.value is error


def test_a_project_error_from_anywhere_is_a_user_error(monkeypatch, capsys):
    def run(args):
        raise CheckpointError("-p 'w.pth': not a PyTorch checkpoint (test)")

    failing_test_command(monkeypatch, run)
    assert main(["test", "-tc", "missing.json"]) == 2
    assert capsys.readouterr().err == "error: -p 'w.pth': not a PyTorch checkpoint (test)\n"


# ----------------------------------------------------------------------------- read_checkpoint


class _Custom:
    """A harmless custom class: still not weights."""


def _not_checkpoints(folder: Path) -> dict[str, Path]:
    files = {name: folder / f"{name}.pth" for name in ("text", "random", "pickle", "custom")}
    files["text"].write_text("these are not weights\n")
    files["random"].write_bytes(os.urandom(4096))
    files["pickle"].write_bytes(pickle.dumps(_Custom()))
    torch.save({"model": {"w": torch.ones(2)}, "extra": _Custom()}, files["custom"])
    files["empty"] = folder / "empty.pth"
    files["empty"].write_bytes(b"")
    return files


def test_read_checkpoint_reads_a_state_dict(tmp_path):
    torch.save({"w": torch.arange(3)}, tmp_path / "w.pth")
    assert read_checkpoint(tmp_path / "w.pth", "-p")["w"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("name", ["text", "random", "pickle", "custom", "empty"])
def test_read_checkpoint_refuses_what_is_not_a_checkpoint(tmp_path, name):
    path = _not_checkpoints(tmp_path)[name]
    with pytest.raises(CheckpointError) as raised:
        read_checkpoint(path, "-p weights")
    message = str(raised.value)
    assert message.startswith(f"-p weights {str(path)!r}: not a PyTorch checkpoint (")
    assert "weights_only" not in message and "\n" not in message
    if name == "custom":
        assert "_Custom" in message


def test_read_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"w": MaliciousPayload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth': not a PyTorch checkpoint .*_leave"):
        read_checkpoint(tmp_path / "evil.pth", "-p")
    assert not marker.exists()


def test_read_checkpoint_missing_file_and_folder(tmp_path):
    with pytest.raises(
        CheckpointNotFoundError, match=r"-r: checkpoint '.*nope\.pth'.*no such file"
    ):
        read_checkpoint(tmp_path / "nope.pth", "-r: checkpoint")
    with pytest.raises(FileNotFoundError):  # still the built-in type callers may catch
        read_checkpoint(tmp_path / "nope.pth", "-r: checkpoint")
    with pytest.raises(CheckpointError, match="not a file"):
        read_checkpoint(tmp_path, "-p")


@pytest.mark.parametrize("name", ["text", "pickle", "custom"])
def test_cli_names_a_file_that_is_not_a_checkpoint(tmp_path, capsys, name):
    path = _not_checkpoints(tmp_path)[name]
    args = ["explain", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-p", str(path)]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path.name}': not a PyTorch checkpoint (" in err, err
    assert "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_cli_names_a_missing_weights_file(tmp_path, capsys):
    args = ["explain", "a.png", "b.png", "-p", str(tmp_path / "absent.pth"), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "absent.pth' does not exist (no such file)" in err and len(err.splitlines()) == 1
