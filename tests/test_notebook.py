"""doc/visualize_xcos_one_example.ipynb runs headless, top to bottom, on synthetic faces."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO, require_module

NOTEBOOK = REPO / "doc" / "visualize_xcos_one_example.ipynb"


@pytest.mark.slow
def test_notebook_executes_and_draws_both_figures(tiny_checkpoint, tiny_synth, monkeypatch):
    nbformat = require_module("nbformat")
    nbclient = require_module("nbclient")
    faces = sorted((tiny_synth / "val").glob("*/*.png"))[:2]
    monkeypatch.setenv("XCOS_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.setenv("XCOS_IMAGE_A", str(faces[0]))
    monkeypatch.setenv("XCOS_IMAGE_B", str(faces[1]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 2  # the paper layout and the overlay
    printed = "".join(out.get("text", "") for out in outputs)
    assert "xCos" in printed and "threshold" in printed
    assert "difference:" in printed
    assert re.search(
        r"most different cells \(highest first\): (\(\d, \d\)(, )?){3}$", printed, re.M
    )
