"""The command line, end to end: the demo config (shrunk), the classic entry point, errors."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import DEMO_CONFIG, REPO
from xcos.cli import main

SHRINK = [
    "--set",
    "trainer.compile=false",
    "--set",
    'data.synthetic.identities={"train": 8, "val": 6, "test": 6}',
    "--set",
    "data.synthetic.images_per_identity=4",
    "--set",
    "data.synthetic.pairs_per_split=40",
    "--set",
    "data.synthetic.one_region_pairs=0",
    "--set",
    "data.batch_size=8",
    "--set",
    "data.num_workers=0",
    "--set",
    "trainer.epochs=2",
    "--set",
    "trainer.max_steps_per_epoch=2",
    "--set",
    "test.figures=2",
    "--device",
    "cpu",
]


@pytest.mark.slow
def test_demo_config_trains_and_tests_shrunk(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo's relative data paths land in tmp_path
    assert main(["train", "-tc", str(DEMO_CONFIG), *SHRINK, "--out", "run"]) == 0
    run = tmp_path / "run"
    for name in (
        "config.json",
        "log.txt",
        "metrics.csv",
        "checkpoints/last.pth",
        "checkpoints/best.pth",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((run / "config.json").read_text())
    assert (
        saved["trainer"]["epochs"] == 2 and saved["data"]["synthetic"]["images_per_identity"] == 4
    )
    printed = capsys.readouterr().out
    assert "trainer.epochs: 5 -> 2" in printed  # the config diff against the template
    assert (
        main(
            [
                "test",
                "-tc",
                str(DEMO_CONFIG),
                *SHRINK,
                "-p",
                "run/checkpoints/best.pth",
                "--out",
                "run/test",
            ]
        )
        == 0
    )
    metrics = json.loads((run / "test/metrics.json").read_text())
    assert set(metrics["synth_test"]) == {"xcos", "cos"}
    assert (run / "test/scores/synth_test.csv").is_file()
    assert len(list((run / "test/figures").glob("*.png"))) == 2
    assert "synth_test" in capsys.readouterr().out


@pytest.mark.slow
def test_classic_entry_point_and_resume_into_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["-tc", str(DEMO_CONFIG), *SHRINK, "--set", "trainer.epochs=1", "--out", "run"]) == 0
    )
    last = tmp_path / "run/checkpoints/last.pth"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert (
        main(["-tc", str(DEMO_CONFIG), *SHRINK, "-r", str(last)]) == 0
    )  # --out defaults to the run
    assert torch.load(last, weights_only=True)["epoch"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "trainer.epoch=3"], "trainer.epoch: unknown key"),
        (["-r", "missing.pth"], "-r: checkpoint 'missing.pth' does not exist"),
        (["--set", "data.train.root=nowhere"], "data.train.root: folder 'nowhere' does not exist"),
    ],
)
def test_user_errors_are_one_line_with_status_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-tc", str(DEMO_CONFIG), *SHRINK, "--out", "run", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_cuda_without_gpu(tmp_path, capsys):
    assert main(["train", "-tc", str(DEMO_CONFIG), "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


@pytest.mark.slow
def test_main_py_test_mode_without_weights_and_missing_config(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "main.py",
            "-tc",
            str(DEMO_CONFIG),
            "--mode",
            "test",
            "--out",
            str(tmp_path),
            "--set",
            "data.synthetic=null",
            "--device",
            "cpu",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert run.returncode == 2 and "test mode needs weights: -p" in run.stderr
    run = subprocess.run(
        [sys.executable, "main.py", "-tc", "nope.json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "config file 'nope.json' does not exist" in run.stderr
