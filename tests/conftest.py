"""Shared fixtures: a tiny SynthFaces set and the real demo config, shrunk for CPU tests."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo_synthetic.json"


def shared_dir() -> Path:
    return Path(os.environ.get("XCOS_SHARED", REPO.parent / "shared"))


def skip_or_fail(message: str) -> NoReturn:
    """Skip the test, or fail it instead when XCOS_REQUIRE_DATA=1 (CI must run everything)."""
    if os.environ.get("XCOS_REQUIRE_DATA") == "1":
        pytest.fail(message + " and XCOS_REQUIRE_DATA=1")
    pytest.skip(message)


def require_shared(relative: str) -> Path:
    """Path under ../shared; skip when absent, fail instead when XCOS_REQUIRE_DATA=1."""
    path = shared_dir() / relative
    if not path.exists():
        skip_or_fail(f"{path} is absent (set XCOS_SHARED to the shared folder)")
    return path


def require_module(name: str) -> ModuleType:
    """``pytest.importorskip`` that fails instead of skipping when XCOS_REQUIRE_DATA=1."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        skip_or_fail(f"could not import {name!r}: {err}")


def require_dlib_weights() -> Path:
    """dlib's face-recognition .dat; skip when absent, fail instead when XCOS_REQUIRE_DATA=1."""
    from xcos.errors import DlibWeightsNotFoundError
    from xcos.models.dlib_format import find_dlib_weights

    try:
        return Path(find_dlib_weights())
    except DlibWeightsNotFoundError as err:
        skip_or_fail(str(err))


def chromium_or_skip():
    """Selenium + Debian's chromium and chromium-driver; skip with the reason when absent, fail
    instead under XCOS_REQUIRE_DATA=1 (CI; .ci/run installs them) or XCOS_REQUIRE_BROWSER=1."""
    import os
    import shutil

    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (dev extra)")
    if missing:
        message = f"headless browser test needs {', '.join(missing)}"
        flags = ("XCOS_REQUIRE_DATA", "XCOS_REQUIRE_BROWSER")
        required = [flag for flag in flags if os.environ.get(flag) == "1"]
        if required:
            pytest.fail(f"{message}; required under {required[0]}=1 (.ci/run installs them)")
        pytest.skip(message)
    return shutil.which("chromium"), shutil.which("chromedriver")


def headless_chromium():
    """A Selenium driver of headless Chromium that keeps the browser console log (skips, or
    fails under XCOS_REQUIRE_DATA=1, like ``chromium_or_skip``); the caller quits it."""
    chromium, chromedriver = chromium_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=options)


TINY_SYNTH = {
    "type": "synthfaces",
    "identities": {"train": 8, "val": 6},
    "images_per_identity": 4,
    "pairs_per_split": 40,
    "one_region_pairs": 0,
    "seed": 3,
    "image_size": 64,
}


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A tiny 64x64 SynthFaces set shared by the tests of one session."""
    from xcos.data.generators import synthfaces

    root = tmp_path_factory.mktemp("synth")
    synthfaces(str(root), **{k: v for k, v in TINY_SYNTH.items() if k != "type"})
    return root


def tiny_overrides(synth_root: Path) -> dict:
    """A config layer that shrinks the demo config to seconds on CPU."""
    return {
        "data": {
            "synthetic": None,
            "train": {
                "type": "image_folder_pairs",
                "root": str(synth_root / "train"),
                "image_size": 64,
                "seed": 0,
            },
            "batch_size": 4,
            "num_workers": 0,
        },
        "model": {
            "backbone": {
                "type": "ir_se",
                "depth": 10,
                "width": 0.25,
                "embedding_dim": None,
                "input_size": 64,
            }
        },
        "schedulers": {
            "main": {
                "type": "StepLR",
                "step_size": 1,
                "gamma": 0.5,
                "interval": "epoch",
                "warmup": 0,
            }
        },
        "trainer": {
            "epochs": 1,
            "compile": False,  # compiling costs ~30 s per model: one slow test covers it
            "max_steps_per_epoch": 3,
            "tensorboard": False,
            "progress_bar": False,
        },
        "validation": {
            "pair_sets": [str(synth_root / "synth_val.csv")],
            "monitor": {"pair_set": "synth_val", "score": "xcos"},
        },
        "test": {"pair_sets": [str(synth_root / "synth_val.csv")], "figures": 2},
    }


@pytest.fixture
def tiny_config(tiny_synth):
    """Factory: the demo config shrunk, plus optional extra layers and --set overrides."""
    from xcos.config import load_config

    def make(*layers: dict, overrides: tuple[str, ...] = ()):
        return load_config(DEMO_CONFIG, [tiny_overrides(tiny_synth), *layers], overrides)

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_synth, tmp_path_factory) -> Path:
    """best.pth of the shrunk demo config trained for a few steps (shared by a session)."""
    import torch

    from xcos.config import load_config
    from xcos.engine.trainer import Trainer

    config = load_config(DEMO_CONFIG, [tiny_overrides(tiny_synth)])
    run = tmp_path_factory.mktemp("run")
    Trainer(config, run, torch.device("cpu")).fit()
    return run / "checkpoints" / "best.pth"


def reference_threshold(scores, labels) -> tuple[float, float]:
    """Brute force of ``best_threshold`` for tests: count the hits of every midpoint between
    distinct scores (and one below, one above them all); the lowest of the best wins."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    distinct = np.unique(scores)
    candidates = np.concatenate(
        [[distinct[0] - 1.0], (distinct[:-1] + distinct[1:]) / 2.0, [distinct[-1] + 1.0]]
    )
    hits = ((scores[None, :] > candidates[:, None]) == labels[None, :]).sum(axis=1)
    best = int(np.argmax(hits))  # the first maximum: candidates ascend
    return float(candidates[best]), float(hits[best] / scores.size)


def reference_kfold(scores, labels, folds) -> tuple[list[float], list[float]]:
    """Per-fold (accuracies, thresholds) by brute force: each fold's threshold is chosen on
    the pairs of all the other folds only, then applied to the fold's own pairs."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    folds = np.asarray(folds)
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        test = folds == fold
        threshold, _ = reference_threshold(scores[~test], labels[~test])
        accuracies.append(float(((scores[test] > threshold) == labels[test]).mean()))
        thresholds.append(threshold)
    return accuracies, thresholds


def reference_auc(scores, labels) -> float:
    """ROC AUC by its definition: P(same-pair score > different-pair score), ties counting 1/2."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    same, different = scores[labels][:, None], scores[~labels][None, :]
    return float(
        ((same > different).sum() + 0.5 * (same == different).sum()) / same.size / different.size
    )


def _leave_marker(path: str) -> None:
    Path(path).write_text("code ran")


class MaliciousPayload:
    """Pickles as a call to ``_leave_marker`` (which writes ``marker``): what a malicious
    checkpoint would do. Safe loaders must refuse it without running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_leave_marker, (str(self.marker),))
