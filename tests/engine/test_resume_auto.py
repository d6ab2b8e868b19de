"""``-r auto``: continue the --out run from its last.pth when there is one, else start fresh, so
that ``torchrun --max-restarts`` recovers from a dead worker by itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest
import torch

from tests.conftest import DEMO_CONFIG, REPO, tiny_overrides
from xcos.cli import main
from xcos.cli.train import resolve_resume
from xcos.engine.run_checkpoint import write_run_checkpoint

KILL_WORKER = REPO / "tests" / "helpers" / "kill_worker.py"
TIMEOUT_S = 300  # one torchrun job; ~40 s on 2 idle cores


def test_auto_without_out_is_a_user_error(capsys):
    assert main(["train", "-tc", str(DEMO_CONFIG), "-r", "auto"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: -r auto: needs --out")


def test_auto_resumes_from_last_when_present_else_starts_fresh(tmp_path, caplog):
    caplog.set_level("INFO", logger="xcos")
    last = tmp_path / "checkpoints" / "last.pth"
    assert resolve_resume("auto", tmp_path) is None
    assert "starting fresh" in caplog.text
    write_run_checkpoint({"step": 1}, tmp_path, "last.pth")
    assert resolve_resume("auto", tmp_path) == str(last)
    assert f"-r auto: resuming from {last}" in caplog.text
    assert resolve_resume("other.pth", tmp_path) == "other.pth"  # a path is left alone
    assert resolve_resume(None, tmp_path) is None


def _torchrun(launcher: list[str], run: Path, layer: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=1",
        "--monitor-interval=0.1",
        *launcher,
        "-tc",
        str(DEMO_CONFIG),
        "-sc",
        str(layer),
        "--out",
        str(run),
        "-r",
        "auto",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    # torchrun's agent shares one TCPStore with every attempt, so a restarted worker can read
    # the dead attempt's gloo addresses and fail or hang (pytorch/pytorch#135712; here most
    # restarts did): give each attempt its own store, as the README says for --max-restarts
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    # its own process group: on a timeout the workers go too, not only torchrun
    process = subprocess.Popen(
        command, env=env, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun ran over {TIMEOUT_S} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_torchrun_restart_after_a_killed_worker_equals_an_uninterrupted_run(tiny_synth, tmp_path):
    layer = tiny_overrides(tiny_synth)
    # 2 epochs of 3 steps, a checkpoint after every step, bit-reproducible fp32 on CPU
    layer["trainer"] |= {
        "epochs": 2,
        "checkpoint_every_steps": 1,
        "deterministic": True,
        "amp": "none",
    }
    layer_path = tmp_path / "layer.json"
    layer_path.write_text(json.dumps(layer))

    straight = tmp_path / "straight"
    done = _torchrun([str(REPO / "main.py")], straight, layer_path)
    assert done.returncode == 0, done.stderr[-3000:]

    # rank 1 dies as step 6 starts: 5 steps done, 2 of them in epoch 2; rank 0 has written
    # last.pth after step 5 (or, had the kill beaten the write, after step 4)
    killed = tmp_path / "killed"
    done = _torchrun([str(KILL_WORKER), "1", "5"], killed, layer_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kill_worker: rank 1 dies after step 5" in done.stderr
    # A deterministic restart from scratch would end with the same weights too: the log shows
    # the second attempt continued from last.pth, mid-epoch.
    log = (killed / "log.txt").read_text()  # rank 0's log, appended by both attempts
    assert log.count("starting fresh") == 1
    assert log.count(f"-r auto: resuming from {killed / 'checkpoints' / 'last.pth'}") == 1
    assert "resumed at epoch 2, step 5" in log or "resumed at epoch 2, step 4" in log

    final = torch.load(killed / "checkpoints" / "last.pth", weights_only=True)
    expected = torch.load(straight / "checkpoints" / "last.pth", weights_only=True)
    assert (final["epoch"], final["step"]) == (expected["epoch"], expected["step"]) == (2, 6)
    assert final["model"].keys() == expected["model"].keys()
    different = [k for k, v in expected["model"].items() if not torch.equal(final["model"][k], v)]
    assert not different, f"{len(different)} tensor(s) differ, first: {different[:5]}"
