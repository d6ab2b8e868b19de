"""`xcos report`: a static HTML page of a model's worst errors, with working relative images."""

from __future__ import annotations

import csv
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import headless_chromium
from xcos import Verifier
from xcos.cli import main
from xcos.explain.report import pick_pairs


@pytest.fixture
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_pick_pairs_orders_the_worst_errors_first():
    scores = np.array([0.9, 0.2, 0.7, 0.1, 0.6, 0.4, 0.8])
    labels = np.array([0, 1, 0, 1, 1, 0, 1])
    picked = pick_pairs(scores, labels, threshold=0.5, errors=5, correct=10, seed=0)
    assert picked["false accepts"] == [0, 2]  # different people scored highest first
    assert picked["false rejects"] == [3, 1]  # same person scored lowest first
    assert picked["correct decisions"] == [4, 5, 6]
    assert pick_pairs(scores, labels, 0.5, errors=1, correct=1, seed=0)["false accepts"] == [0]


@pytest.mark.slow
def test_report_is_a_self_contained_folder(checkpoint, tiny_synth, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["report", "-p", str(checkpoint), "--pairs", str(tiny_synth / "synth_val.csv")]
    args += ["--out", str(out), "--threshold", "0.5", "--errors", "3", "--correct", "2"]
    assert main([*args, "--device", "cpu"]) == 0
    assert "index.html" in capsys.readouterr().out
    page = Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert page.images, "the report shows no figure"
    for source in page.images:
        assert not source.startswith(("/", "http")), source  # relative: opens offline
        with Image.open(out / source) as image:
            assert image.size[0] > 300
    assert not page.tags & {"script", "link", "iframe"}  # nothing to fetch or run
    text = " ".join(page.text)
    assert "threshold (xCos)" in text and "0.5000" in text and "accuracy at this threshold" in text
    for heading in ("false accepts", "false rejects", "correct decisions"):
        assert heading in text
    assert len(page.images) <= 3 + 3 + 2
    check_most_different_cells(checkpoint, tiny_synth, (out / "index.html").read_text())


def check_most_different_cells(checkpoint, tiny_synth, page: str) -> None:
    """Each entry names its 3 most different cells, and they are the top of the pair's
    difference map (recomputed with the Verifier on the pair's faces)."""
    entries = re.findall(r"pair (\d+): xCos.*?<p>most different cells: ([^<]*)</p>", page)
    assert entries and len(entries) == page.count("<img ")
    verifier = Verifier.from_checkpoint(checkpoint, threshold=0.5, device="cpu")
    pairs = list(csv.DictReader((tiny_synth / "synth_val.csv").open()))
    for pair, named in entries[:2]:
        cells = [tuple(map(int, cell)) for cell in re.findall(r"\((\d+), (\d+)\)", named)]
        assert len(cells) == 3 and named == ", ".join(f"({r}, {c})" for r, c in cells)
        row = pairs[int(pair)]
        paths = [tiny_synth / row[key] for key in ("path_a", "path_b")]
        difference = verifier.explain(*paths).difference
        values = [difference[cell] for cell in cells]
        assert values == pytest.approx(np.sort(difference.ravel())[::-1][:3], abs=1e-5)


def test_report_needs_a_threshold(checkpoint, tiny_synth, tmp_path, capsys):
    bare = tmp_path / "bare.pth"
    state = torch.load(checkpoint, weights_only=True)
    state["threshold"] = None
    torch.save(state, bare)
    args = ["report", "-p", str(bare), "--pairs", str(tiny_synth / "synth_val.csv")]
    assert main([*args, "--out", str(tmp_path / "r"), "--device", "cpu"]) == 2
    assert "threshold" in capsys.readouterr().err


@pytest.mark.slow
def test_report_opens_in_headless_chromium(checkpoint, tiny_synth, tmp_path):
    out = tmp_path / "report"
    args = ["report", "-p", str(checkpoint), "--pairs", str(tiny_synth / "synth_val.csv")]
    assert main([*args, "--out", str(out), "--threshold", "0.5", "--device", "cpu"]) == 0
    driver = headless_chromium()
    try:
        driver.get((out / "index.html").as_uri())
        shown = driver.execute_script("return document.images.length")
        broken = driver.execute_script(
            "return Array.from(document.images)"
            ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
        )
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert driver.title.startswith("xCos report")
        assert shown > 0 and broken == [], broken
        assert errors == [], errors
        assert driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
    with Image.open(tmp_path / "report.png") as screenshot:
        assert screenshot.size[0] > 300
