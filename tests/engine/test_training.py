"""Trainer: exact resume, crash safety, non-finite losses, checkpoints, test mode."""

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import DEMO_CONFIG, REPO, reference_auc, reference_kfold, tiny_overrides
from xcos.checkpoints import load_weights_file
from xcos.engine import tester as tester_module
from xcos.engine import trainer as trainer_module
from xcos.engine.tester import run_test
from xcos.engine.trainer import Trainer
from xcos.errors import NonFiniteLossError
from xcos.evaluation.evaluator import evaluate_pair_set
from xcos.runtime import resolve_device

CPU = torch.device("cpu")


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_epochs_equal_one_epoch_then_resume(tiny_config, tmp_path):
    config = tiny_config(overrides=("trainer.epochs=2", "trainer.deterministic=true"))
    straight = Trainer(config, tmp_path / "straight", CPU)
    straight.fit()
    first = tiny_config(overrides=("trainer.epochs=1", "trainer.deterministic=true"))
    Trainer(first, tmp_path / "half", CPU).fit()
    resumed = Trainer(
        config, tmp_path / "resumed", CPU, resume=tmp_path / "half/checkpoints/last.pth"
    )
    assert resumed.epoch == 1
    resumed.fit()
    assert resumed.step == straight.step == 6
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    for name, optimizer in straight.optimizers.items():
        assert optimizer.param_groups[0]["lr"] == resumed.optimizers[name].param_groups[0]["lr"]


def test_mid_epoch_crash_then_resume_equals_straight_run(tiny_config, tmp_path):
    overrides = ("trainer.deterministic=true", "trainer.max_steps_per_epoch=5")
    straight = Trainer(tiny_config(overrides=overrides), tmp_path / "straight", CPU)
    straight.fit()
    crashing = Trainer(
        tiny_config(overrides=(*overrides, "trainer.checkpoint_every_steps=1")),
        tmp_path / "crash",
        CPU,
    )
    real_step = crashing.train_step

    def crash_at_step_3(batch):
        if crashing.step == 3:
            raise RuntimeError("simulated crash")
        return real_step(batch)

    crashing.train_step = crash_at_step_3
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit()
    last = tmp_path / "crash/checkpoints/last.pth"
    assert torch.load(last, weights_only=True)["batch_in_epoch"] == 3
    resumed = Trainer(tiny_config(overrides=overrides), tmp_path / "resumed", CPU, resume=last)
    resumed.fit()
    assert resumed.step == straight.step == 5
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())


def test_checkpoint_contents_load_with_weights_only(tiny_config, tmp_path, monkeypatch):
    validated = []

    def keep_result(*args, **kwargs):
        validated.append(evaluate_pair_set(*args, **kwargs))
        return validated[-1]

    monkeypatch.setattr(trainer_module, "evaluate_pair_set", keep_result)
    Trainer(tiny_config(), tmp_path, CPU).fit()
    for name in ("last.pth", "best.pth"):
        state = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert {
            "model",
            "optimizers",
            "schedulers",
            "scaler",
            "rng",
            "epoch",
            "step",
            "config",
        } <= set(state)
        assert state["config"]["name"] == "demo_synthetic"
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == len(validated) == 1 and rows[0]["epoch"] == "1"
    result = validated[0]
    assert len(result.scores["xcos"]) == 40
    for score in ("xcos", "cos"):
        # the logged accuracy, recomputed from the validation scores by brute force
        accuracies, _ = reference_kfold(
            result.scores[score], result.pair_set.labels, result.pair_set.folds
        )
        logged = float(rows[0][f"synth_val/{score}/accuracy"])
        assert logged == pytest.approx(np.mean(accuracies), abs=1e-12), score


def test_non_finite_loss_stops_and_keeps_last_good_state(tiny_config, tmp_path):
    config = tiny_config(
        overrides=("trainer.checkpoint_every_steps=1", "trainer.max_steps_per_epoch=5")
    )
    trainer = Trainer(config, tmp_path, CPU)
    loss = trainer.losses[1]
    calls = {"n": 0}
    original = loss.compute

    def poisoned(prediction, target):
        calls["n"] += 1
        value = original(prediction, target)
        return value * float("nan") if calls["n"] == 3 else value

    loss.compute = poisoned
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, step 3.*last\.pth"):
        trainer.fit()
    saved = torch.load(tmp_path / "checkpoints/last.pth", weights_only=True)
    assert saved["step"] == 2
    # Parameters were not updated by step 3 (its forward pass did move BN statistics in
    # memory, which is why the checkpoint, not the live model, is the last good state).
    parameters = dict(trainer.model.named_parameters())
    assert all(torch.equal(saved["model"][k], p) for k, p in parameters.items())


@pytest.mark.slow
def test_sigkill_mid_epoch_leaves_loadable_last_and_resumes(tiny_synth, tmp_path):
    layer = tiny_overrides(tiny_synth)
    layer["trainer"] |= {"max_steps_per_epoch": 200, "checkpoint_every_steps": 1, "epochs": 1}
    layer_path = tmp_path / "layer.json"
    layer_path.write_text(json.dumps(layer))
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "xcos",
        "train",
        "-tc",
        str(DEMO_CONFIG),
        "-sc",
        str(layer_path),
        "--out",
        str(run_dir),
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run_dir / "checkpoints" / "last.pth"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["step"] >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = torch.load(last, weights_only=True)  # loadable, whatever moment the kill hit
    assert 3 <= state["step"] < 200 and state["epoch"] == 0
    steps = state["batch_in_epoch"] + 2
    resumed = subprocess.run(
        [*command, "-r", str(last), "--set", f"trainer.max_steps_per_epoch={steps}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == 1 and final["step"] >= state["step"] + 1
    assert (run_dir / "checkpoints" / "best.pth").exists()


@pytest.mark.slow
def test_test_mode_writes_metrics_scores_and_figures(tiny_config, tmp_path, monkeypatch):
    config = tiny_config()
    Trainer(config, tmp_path / "train", CPU).fit()
    tested = []

    def keep_result(*args, **kwargs):
        tested.append(evaluate_pair_set(*args, **kwargs))
        return tested[-1]

    monkeypatch.setattr(tester_module, "evaluate_pair_set", keep_result)
    summary = run_test(config, tmp_path / "test", CPU, tmp_path / "train/checkpoints/best.pth")
    metrics = json.loads((tmp_path / "test/metrics.json").read_text())
    assert metrics == summary
    assert set(metrics) == {"synth_val"}
    for score in ("xcos", "cos"):
        values = metrics["synth_val"][score]
        assert {"accuracy", "accuracy_std", "threshold", "auc", "eer", "tar_at_far"} <= set(values)
        assert len(values["fold_accuracies"]) == 10
        assert set(values["tar_at_far"]) == {"1e-01", "1e-02", "1e-03"}
    assert (tmp_path / "test/roc/synth_val.png").is_file()
    with (tmp_path / "test/scores/synth_val.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["pair", "fold", "label", "xcos", "cos"]
    assert len(rows) == 40 and {r["fold"] for r in rows} == {str(k) for k in range(10)}
    assert len(tested) == 1
    labels = np.array([int(r["label"]) for r in rows])
    folds = np.array([int(r["fold"]) for r in rows])
    for score in ("xcos", "cos"):
        # the saved scores are the evaluated ones (to 6 decimals); metrics.json is recomputed
        # from the full-precision ones (rounding could tie two close scores)
        scores = np.asarray(tested[0].scores[score], dtype=np.float64)
        saved = np.array([float(r[score]) for r in rows])
        np.testing.assert_allclose(saved, scores, rtol=0, atol=5.01e-7)
        accuracies, thresholds = reference_kfold(scores, labels, folds)
        values = metrics["synth_val"][score]
        assert values["fold_accuracies"] == pytest.approx(accuracies, abs=1e-12), score
        assert values["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-12), score
        assert values["threshold"] == pytest.approx(np.mean(thresholds), abs=1e-12), score
        assert values["auc"] == pytest.approx(reference_auc(scores, labels), abs=1e-12), score
    assert len(list((tmp_path / "test/figures").glob("*.png"))) == 2


def test_weights_of_another_architecture_are_refused(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(), tmp_path, CPU)
    other = tiny_config(overrides=("model.head.grid_channels=16",))
    model = Trainer(other, tmp_path / "other", CPU).model
    weights = tmp_path / "other.pth"
    torch.save({"model": model.state_dict()}, weights)
    with pytest.raises(
        ValueError, match=r"another architecture: \d+ parameter\(s\) differ.*head\.grid\.0\.weight"
    ):
        load_weights_file(trainer.model, weights, "-p", strict=False)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(ValueError, match="shares no parameter name"):
        load_weights_file(trainer.model, unrelated, "-p", strict=False)
    partial = {
        k: v for k, v in trainer.model.state_dict().items() if not k.startswith("identity_head")
    }
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pth")
    missing, unexpected = load_weights_file(
        trainer.model, tmp_path / "partial.pth", "-p", strict=False
    )
    assert missing == ["identity_head.kernel"] and unexpected == ["extra.weight"]


def test_resume_from_missing_checkpoint(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"-r: checkpoint .*nope\.pth.* does not exist"):
        Trainer(tiny_config(), tmp_path, CPU, resume=tmp_path / "nope.pth")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_and_fp16_on_cpu(tiny_config, tmp_path):
    with pytest.raises(RuntimeError, match="no CUDA GPU is available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Trainer(tiny_config(overrides=("trainer.amp=fp16",)), tmp_path, CPU)


def test_bf16_autocast_trains_on_cpu(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(overrides=("trainer.amp=bf16",)), tmp_path, CPU)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    dtypes = []  # (training?, dtype) of the first convolution's output, every forward

    def record(module, args, output):
        dtypes.append((module.training, output.dtype))

    first_conv = next(m for m in trainer.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    handle = first_conv.register_forward_hook(record)
    try:
        trainer.fit()
    finally:
        handle.remove()
    # the training steps ran their convolutions in bfloat16 (inside autocast) ...
    assert [dtype for training, dtype in dtypes if training] == [torch.bfloat16] * trainer.step
    assert trainer.step == 3
    # ... and the float32 weights moved, and stayed finite
    after = trainer.model.state_dict()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    changed = [
        k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert changed and any(k.startswith("backbone.") and k.endswith("weight") for k in changed)
    assert any(k.startswith("head.") for k in changed)


def test_pretrained_target_is_frozen_and_in_eval_mode(tiny_config, tmp_path):
    target_backbone = {
        "type": "ir_se",
        "depth": 10,
        "width": 0.25,
        "embedding_dim": 16,
        "input_size": 64,
    }
    from xcos.registry import BACKBONES

    network = BACKBONES.build(target_backbone, "t")
    torch.save(network.state_dict(), tmp_path / "target.pth")
    layer = {
        "model": {
            "target": {
                "type": "pretrained",
                "checkpoint": str(tmp_path / "target.pth"),
                "backbone": target_backbone,
            }
        }
    }
    trainer = Trainer(tiny_config(layer), tmp_path / "run", CPU)
    before = {k: v.clone() for k, v in trainer.model.target.state_dict().items()}
    trainer.fit()
    target = trainer.model.target
    assert not target.network.training and trainer.model.training
    assert all(not p.requires_grad for p in target.parameters())
    assert states_equal(before, target.state_dict())  # BN statistics untouched too
    all_optimized = {
        id(p) for o in trainer.optimizers.values() for g in o.param_groups for p in g["params"]
    }
    assert not any(id(p) in all_optimized for p in target.parameters())


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_config, tmp_path):
    """trainer.compile (on in the demo config; ~30 s to compile here): the same first loss
    as eager, and it trains."""
    overrides = ("trainer.deterministic=true", "trainer.amp=none")
    eager = Trainer(tiny_config(overrides=overrides), tmp_path / "eager", CPU)
    compiled = Trainer(
        tiny_config(overrides=(*overrides, "trainer.compile=true")), tmp_path / "compiled", CPU
    )
    assert compiled.net is not compiled.model  # the step calls the compiled module
    losses = [t.train_step(next(iter(t.epoch_loader())))["loss"] for t in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    compiled.fit()
    assert (tmp_path / "compiled" / "checkpoints" / "last.pth").is_file()


def test_trainer_fixes_the_heap_thresholds_before_any_pass(tiny_config, tmp_path, monkeypatch):
    """glibc's sliding thresholds re-map and zero each step's activations (doc/performance.md):
    the Trainer sets fixed ones first, before caching passes and steps."""
    from tests.test_runtime_memory import FakeLibc
    from xcos import runtime

    libc = FakeLibc()
    monkeypatch.setattr(runtime, "_glibc", lambda: libc)
    Trainer(tiny_config(), tmp_path / "run", CPU)
    assert libc.calls[:2] == [
        ("mallopt", runtime.M_MMAP_THRESHOLD, runtime.STEADY_MMAP_THRESHOLD),
        ("mallopt", runtime.M_TRIM_THRESHOLD, runtime.STEADY_TRIM_THRESHOLD),
    ]
