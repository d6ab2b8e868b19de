"""Distributed data parallel on CPU (gloo): sampler shares, sharded validation, the loss of
one step against one process, torchrun end to end, and resuming with another process count."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import DEMO_CONFIG, REPO, tiny_overrides
from xcos.config import load_config
from xcos.data.pair_set_specs import load_pair_set
from xcos.distributed import Distributed, init_distributed, shutdown_distributed
from xcos.engine.data_loaders import EpochSampler
from xcos.engine.features import compute_backbone_outputs
from xcos.engine.trainer import Trainer
from xcos.evaluation.evaluator import assemble_scores, evaluate_pair_set, score_pair_set

CPU = torch.device("cpu")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------------------- in one process


def test_sampler_shares_are_disjoint_and_cover_the_single_process_order():
    single = [index for _, index in EpochSampler(23, seed=5)]
    shares = [list(EpochSampler(23, seed=5, rank=r, world_size=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 11  # equal lengths: no rank waits for another
    assert {e for share in shares for e, _ in share} == {0}
    indices = [[index for _, index in share] for share in shares]
    assert not set(indices[0]) & set(indices[1])
    # a batch of 3 on each of 2 ranks = the first 6 samples of one process with a batch of 6
    assert sorted(indices[0][:3] + indices[1][:3]) == sorted(single[:6])


def test_sampler_reseeds_each_epoch_and_resumes_with_another_world_size():
    sampler = EpochSampler(40, seed=1, rank=0, world_size=2)
    epoch_0 = [i for _, i in sampler]
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != epoch_0 and {e for e, _ in sampler} == {1}
    order = [i for _, i in EpochSampler(40, seed=1)]
    # 2 processes x 2 steps x 3 pairs ran before the checkpoint: 12 samples of the epoch
    before = {i for rank in range(2) for _, i in list(EpochSampler(40, 1, rank, 2))[:6]}
    assert before == set(order[:12])
    resumed = EpochSampler(40, seed=1)  # one process now
    resumed.set_epoch(0, skip=12)
    rest = [i for _, i in resumed]
    assert rest == order[12:] and not before & set(rest)


def test_assembled_scores_need_every_pair_exactly_once():
    part = {"xcos": np.array([0.1, 0.2]), "cos": np.array([0.3, 0.4])}
    other = {"xcos": np.array([0.5]), "cos": np.array([0.6])}
    scores = assemble_scores([(np.array([2, 0]), part), (np.array([1]), other)], 3)
    assert scores["xcos"].tolist() == [0.2, 0.5, 0.1]
    with pytest.raises(RuntimeError, match="1 missing"):
        assemble_scores([(np.array([0, 1]), part)], 3)
    with pytest.raises(RuntimeError, match="1 repeated"):
        assemble_scores([(np.array([0, 1]), part), (np.array([1]), other)], 3)


def test_sync_batchnorm_on_cpu_is_a_clear_config_error(tiny_config, tmp_path):
    config = tiny_config(overrides=("trainer.sync_batchnorm=true",))
    with pytest.raises(Exception, match="SyncBatchNorm runs on CUDA only"):
        Trainer(config, tmp_path, CPU, dist=Distributed(rank=0, world_size=2))


def test_prefetch_without_workers_is_refused(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(overrides=("data.prefetch_factor=4",)), tmp_path, CPU)
    with pytest.raises(Exception, match=r"data.prefetch_factor: needs data.num_workers > 0"):
        trainer.train_epoch()


def test_persistent_workers_see_each_epoch(tiny_config, tmp_path):
    """Workers keep their copy of the data set; the epoch travels with the sampler's keys."""
    config = tiny_config(overrides=("data.num_workers=1", "trainer.max_steps_per_epoch=2"))
    trainer = Trainer(config, tmp_path, CPU)
    loader = trainer.epoch_loader()
    assert loader.persistent_workers
    first = next(iter(loader))
    trainer.epoch = 1
    assert trainer.epoch_loader() is loader
    second = next(iter(loader))
    reference = trainer.dataset
    keys = list(trainer.sampler)[: config.data.batch_size]
    expected = torch.stack([reference[key]["image_b"] for key in keys])
    assert torch.equal(second["image_b"], expected)
    assert not torch.equal(first["image_b"], second["image_b"])


@pytest.mark.slow
def test_importing_never_joins_a_process_group():
    """The group is joined by the command, from torchrun's variables, not at import."""
    code = (
        "import torch.distributed as d, xcos.cli, xcos.engine.trainer, xcos.distributed;"
        "print(d.is_initialized())"
    )
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


# ----------------------------------------------------------------------------- spawned gloo jobs


def _join(rank: int, world_size: int, port: int, processes_per_node: int = 0) -> Distributed:
    """Join a gloo group the way torchrun's environment describes it (one node by default)."""
    local_rank = rank % processes_per_node if processes_per_node else rank
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    dist, device = init_distributed("cpu")
    assert device == CPU and dist.rank == rank and dist.world_size == world_size
    return dist


def _turns_worker(rank: int, port: int, log: str) -> None:
    dist = _join(rank, 4, port, processes_per_node=2)  # two "nodes" of two processes
    try:
        with dist.main_first():
            time.sleep(0.3 if dist.is_main or dist.local_rank == 0 else 0.0)
            with open(log, "a") as handle:
                handle.write(f"{rank}\n")
    finally:
        shutdown_distributed(wait=sys.exc_info()[0] is None)


@pytest.mark.slow
def test_main_first_runs_rank_0_then_each_nodes_first_process_then_the_rest(tmp_path):
    log = tmp_path / "turns.txt"
    mp.spawn(_turns_worker, args=(free_port(), str(log)), nprocs=4)
    order = [int(line) for line in log.read_text().split()]
    assert order[0] == 0 and order[1] == 2 and sorted(order[2:]) == [1, 3]


def _sharded_scores_worker(rank: int, port: int, synth: str, out: str) -> None:
    dist = _join(rank, 2, port)
    try:
        config = load_config(DEMO_CONFIG, [tiny_overrides(Path(synth))])
        trainer = Trainer(config, Path(out) / "run", CPU, dist=dist)
        _steps(trainer, 2)  # each rank's batch-norm statistics now differ
        trainer_model = trainer.model
        pair_set = load_pair_set(str(Path(synth) / "synth_val.csv"))
        result = evaluate_pair_set(trainer_model, pair_set, CPU, dist=dist)
        # the frozen-backbone path: cached backbone outputs, sliced to each rank's images
        outputs = compute_backbone_outputs(
            trainer_model, pair_set.image_reader(64), len(pair_set.images), CPU, flip=False
        )
        cached = evaluate_pair_set(
            trainer_model, pair_set, CPU, backbone_outputs=outputs, dist=dist
        )
        if dist.is_main:
            torch.save(
                {
                    "scores": {k: torch.from_numpy(v) for k, v in result.scores.items()},
                    "cached": {k: torch.from_numpy(v) for k, v in cached.scores.items()},
                    "accuracy": result.metrics["xcos"]["accuracy"],
                    "model": trainer_model.state_dict(),
                },
                Path(out) / "sharded.pt",
            )
    finally:
        shutdown_distributed(wait=sys.exc_info()[0] is None)


@pytest.mark.slow
def test_sharded_validation_scores_every_pair_once(tiny_synth, tmp_path):
    mp.spawn(_sharded_scores_worker, args=(free_port(), str(tiny_synth), str(tmp_path)), nprocs=2)
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=True)
    config = load_config(DEMO_CONFIG, [tiny_overrides(tiny_synth)])
    model = Trainer(config, tmp_path / "single", CPU).model
    model.load_state_dict(sharded["model"])
    pair_set = load_pair_set(str(tiny_synth / "synth_val.csv"))
    single = score_pair_set(model, pair_set, CPU)
    assert len(sharded["scores"]["xcos"]) == len(pair_set) == 40
    for key in ("xcos", "cos"):
        np.testing.assert_allclose(sharded["scores"][key].numpy(), single[key], atol=1e-5)
        # cached outputs are stored in float16: close, not equal
        np.testing.assert_allclose(sharded["cached"][key].numpy(), single[key], atol=2e-3)
    expected = evaluate_pair_set(model, pair_set, CPU).metrics["xcos"]["accuracy"]
    assert sharded["accuracy"] == expected


def _steps(trainer: Trainer, count: int) -> list[float]:
    batches = iter(trainer.epoch_loader())
    return [trainer.train_step(next(batches))["loss"] for _ in range(count)]


def _loss_worker(rank: int, port: int, synth: str, out: str) -> None:
    dist = _join(rank, 2, port)
    try:
        config = load_config(
            DEMO_CONFIG, [tiny_overrides(Path(synth))], ("trainer.deterministic=true",)
        )
        trainer = Trainer(config, Path(out) / "run", CPU, dist=dist)
        losses = _steps(trainer, 2)
        weights = _flat(trainer.model)
        copies = dist.gather(weights)
        if dist.is_main:
            torch.save({"losses": torch.tensor(losses), "weights": copies}, Path(out) / "two.pt")
    finally:
        shutdown_distributed(wait=sys.exc_info()[0] is None)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tiny_synth, tmp_path):
    mp.spawn(_loss_worker, args=(free_port(), str(tiny_synth), str(tmp_path)), nprocs=2)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    config = load_config(
        DEMO_CONFIG,
        [tiny_overrides(tiny_synth)],
        ("trainer.deterministic=true", "data.batch_size=8"),  # 2 processes x 4 pairs
    )
    one = _steps(Trainer(config, tmp_path / "single", CPU), 2)
    rank_0, rank_1 = two["weights"]
    assert torch.equal(rank_0, rank_1)  # gradients were averaged: the copies stay equal
    # Batch norm normalises each process's 4 pairs on its own, so the first loss (same
    # weights, same 8 pairs) is close, not equal; after one update it is closer still.
    assert two["losses"][0] == pytest.approx(one[0], rel=0.03)
    assert two["losses"][1] == pytest.approx(one[1], rel=0.01)


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_two_processes_then_resume_in_one(tiny_synth, tmp_path):
    import json

    layer = tmp_path / "tiny.json"
    layer.write_text(json.dumps(tiny_overrides(tiny_synth)))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(REPO / "main.py"),
        "-tc",
        str(DEMO_CONFIG),
        "-sc",
        str(layer),
        "--set",
        "trainer.epochs=2",
        "--set",
        "trainer.amp=none",  # fp32: the check below recomputes the scores exactly
        "--set",
        "trainer.tensorboard=true",
        "--out",
        str(run),
        "--device",
        "cpu",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["best.pth", "last.pth"]  # one writer, no temporary leftovers
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in run.glob("*.txt")) == ["log.txt"]
    state = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
    assert state["world_size"] == 2 and state["epoch"] == 2
    assert state["step"] == 6  # 3 steps per epoch (max_steps_per_epoch) on each process
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]  # written once, by rank 0
    # the metric saw every validation pair once: it equals a one-process evaluation
    config = load_config(DEMO_CONFIG, [tiny_overrides(tiny_synth)])
    model = Trainer(config, tmp_path / "check", CPU).model
    model.load_state_dict(state["model"])
    pair_set = load_pair_set(str(tiny_synth / "synth_val.csv"))
    single = evaluate_pair_set(model, pair_set, CPU).metrics["xcos"]["accuracy"]
    assert float(rows[-1]["synth_val/xcos/accuracy"]) == pytest.approx(single, abs=1e-9)
    # the two-process checkpoint resumes in one process
    resumed_config = load_config(DEMO_CONFIG, [tiny_overrides(tiny_synth)], ("trainer.epochs=3",))
    resumed = Trainer(resumed_config, run, CPU, resume=run / "checkpoints" / "last.pth")
    assert (resumed.epoch, resumed.step) == (2, 6)
    resumed.fit()
    assert resumed.epoch == 3 and resumed.step == 9
