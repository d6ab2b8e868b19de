"""Every registered component of every registry, built from a minimal config and run once.

After timm's model sweep: each registry entry has a case below that builds it from the
smallest config it accepts and runs it on tiny inputs (images made with PIL in ``tmp_path``).
A component registered without a case fails ``test_every_component_has_a_sweep_case``.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import xcos.registry as registry_module
from xcos.models.backbones.protocol import BackboneProtocol
from xcos.registry import Registry

REGISTRIES: dict[str, Registry] = {
    name: value for name, value in vars(registry_module).items() if isinstance(value, Registry)
}

Case = Callable[[Registry, str, Path], None]
CASES: dict[str, dict[str, Case]] = {}


def case(registry: str, *names: str) -> Callable[[Case], Case]:
    """Register ``run(registry, name, tmp_path)`` as the sweep case of ``names``."""

    def decorate(run: Case) -> Case:
        for name in names:
            CASES.setdefault(registry, {})[name] = run
        return run

    return decorate


def package_names(registry) -> set[str]:
    """The names the xcos package registers (its own classes, and torch's optimizers and
    schedulers): scripts may register their own components in the same process
    (bench/trainer_overhead.py's ``bench_memory_pairs``, when the bench tests run first), and
    those are theirs to test."""
    owners = ("xcos", "torch")
    return {name for name in registry.names() if registry.get(name).__module__.startswith(owners)}


def uncovered() -> dict[str, set[str]]:
    """Registered names without a sweep case (and cases without a registered name)."""
    gaps = {}
    for kind, registry in REGISTRIES.items():
        difference = package_names(registry) ^ set(CASES.get(kind, {}))
        if difference:
            gaps[kind] = difference
    return gaps


# --- tiny files ---------------------------------------------------------------------------


def colour(k: int) -> tuple[int, int, int]:
    return ((40 * k) % 256, (255 - 30 * k) % 256, (70 * k + 20) % 256)


def save_image(path: Path, k: int, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour(k)).save(path)
    return path


def identity_folder(root: Path, people: int = 2, images: int = 2, size: int = 16) -> Path:
    for person in range(people):
        for number in range(images):
            save_image(root / f"person{person}" / f"{number}.png", person * images + number, size)
    return root


def lfw_folder(root: Path, size: int = 16) -> Path:
    """``images/<Name>/<Name>_000k.jpg`` for two people of two images each."""
    for k, name in enumerate(("Ann", "Bob")):
        for number in (1, 2):
            save_image(root / "images" / name / f"{name}_{number:04d}.jpg", 2 * k + number, size)
    return root


# --- backbones ----------------------------------------------------------------------------

BACKBONE_CONFIGS: dict[str, dict[str, Any]] = {
    "ir": {"depth": 10, "width": 0.125, "embedding_dim": 8, "input_size": 32},
    "ir_se": {"depth": 10, "width": 0.125, "embedding_dim": 8, "input_size": 32},
    "iresnet": {"depth": 10, "width": 0.125, "embedding_dim": 8, "input_size": 32},
    "patch_encoder": {"grid": 2, "input_size": 16, "width": 0.125, "out_channels": 8},
    "dlib_resnet": {"level": 1, "weights": None},
}


@case("BACKBONES", *BACKBONE_CONFIGS)
def run_backbone(registry: Registry, name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = registry.build({"type": name, **BACKBONE_CONFIGS[name]}, "model.backbone").eval()
    assert isinstance(backbone, BackboneProtocol)
    assert backbone.face_template in ("arcface", "dlib")
    assert isinstance(backbone.grid_layer, nn.Module)
    size, cells = backbone.input_size, backbone.grid_size
    assert np.asarray(backbone.cell_centres()).shape == (cells,)
    caught: list[torch.Tensor] = []
    handle = backbone.grid_layer.register_forward_hook(lambda m, i, o: caught.append(o))
    try:
        with torch.no_grad():
            images = torch.rand(2, 3, size, size) * 2 - 1
            features = backbone.forward_features(images)
            out = backbone(images)
    finally:
        handle.remove()
    grid_shape = (2, backbone.out_channels, cells, cells)
    assert features.shape == grid_shape and torch.equal(out["grid"], features)
    assert torch.equal(caught[-1], features)  # the grid layer's output is the grid
    if backbone.embedding_dim is None:
        assert set(out) == {"grid"}
    else:
        assert set(out) == {"grid", "embedding"}
        assert out["embedding"].shape == (2, backbone.embedding_dim)


# --- model parts --------------------------------------------------------------------------


@case("HEADS", "xcos")
def run_head(registry: Registry, name: str, tmp_path: Path) -> None:
    head = registry.build({"type": name, "grid_channels": 4}, "model.head", in_channels=8)
    grid_a, grid_b = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    grid_a, grid_b = head.grid_features(grid_a), head.grid_features(grid_b)
    out = head(grid_a, grid_b)
    assert out["patch_cosine"].shape == out["attention"].shape == (2, 3, 3)
    assert out["xcos"].shape == out["cos"].shape == (2,)


@case("IDENTITY_HEADS", "arcface", "cosface")
def run_identity_head(registry: Registry, name: str, tmp_path: Path) -> None:
    head = registry.build({"type": name}, "model.identity_head", embedding_dim=8, num_classes=5)
    logits = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()


@case("TARGETS", "self")
def run_self_target(registry: Registry, name: str, tmp_path: Path) -> None:
    target = registry.build({"type": name}, "model.target")
    cos = torch.tensor([0.5, -0.2], requires_grad=True)
    value = target({}, {"cos": cos})
    assert torch.equal(value, cos.detach()) and not value.requires_grad


@case("TARGETS", "pretrained")
def run_pretrained_target(registry: Registry, name: str, tmp_path: Path) -> None:
    backbone = {"type": "ir", **BACKBONE_CONFIGS["ir"]}
    target = registry.build({"type": name, "backbone": backbone}, "model.target")
    batch = {"image_a": torch.rand(2, 3, 32, 32), "image_b": torch.rand(2, 3, 32, 32)}
    value = target(batch, {})
    assert value.shape == (2,) and bool((value.abs() <= 1.0 + 1e-5).all())


LOSS_INPUTS: dict[str, Callable[[], tuple[dict, dict]]] = {
    "cross_entropy": lambda: ({"logits": torch.randn(4, 5)}, {"identity": torch.arange(4)}),
    "mse": lambda: ({"xcos": torch.rand(4)}, {"target_cos": torch.rand(4)}),
    "locality": lambda: (
        {"perturbed_patch_cosine": torch.rand(4, 3, 3), "perturb_coverage": torch.rand(4, 3, 3)},
        {"perturb_paste": torch.ones(4)},
    ),
    "pointing": lambda: (
        {"perturbed_difference": torch.rand(4, 3, 3), "perturb_coverage": torch.rand(4, 3, 3)},
        {"perturb_paste": torch.ones(4), "label": torch.ones(4)},
    ),
    "effect_ranking": lambda: (
        {"difference": torch.rand(4, 3, 3)},
        {"effect": torch.randn(4, 3, 3), "effect_valid": torch.ones(4)},
    ),
    "covered_attention": lambda: (
        {
            "perturbed_attention": torch.rand(4, 3, 3),
            "attention": torch.rand(4, 3, 3),
            "perturb_coverage": torch.rand(4, 3, 3),
        },
        {"perturb_cover": torch.ones(4)},
    ),
}


@case("LOSSES", *LOSS_INPUTS)
def run_loss(registry: Registry, name: str, tmp_path: Path) -> None:
    loss = registry.build({"type": name}, "losses[0]")
    outputs, batch = LOSS_INPUTS[name]()
    value = loss(outputs, batch)
    assert value.shape == () and torch.isfinite(value)


@case("METRICS", "roc", "verification_accuracy")
def run_metric(registry: Registry, name: str, tmp_path: Path) -> None:
    metric = registry.build({"type": name}, "test.metrics[0]")
    rng = np.random.default_rng(0)
    labels = np.arange(20) % 2
    metric.update(labels + rng.normal(0.0, 0.3, 20), labels, np.arange(20) // 2)
    result = metric.compute()
    assert isinstance(result, dict) and result


# --- data ---------------------------------------------------------------------------------


def check_pairs_dataset(dataset: Any, size: int) -> None:
    assert len(dataset) > 0
    item = dataset[0]
    assert item["image_a"].shape == item["image_b"].shape == (3, size, size)
    assert int(item["label"]) in (0, 1)


@case("DATASETS", "image_folder_pairs")
def run_image_folder(registry: Registry, name: str, tmp_path: Path) -> None:
    root = identity_folder(tmp_path / "faces")
    cfg = {"type": name, "root": str(root), "image_size": 16}
    check_pairs_dataset(registry.build(cfg, "data.train"), 16)


@case("DATASETS", "shard_pairs")
def run_shard_pairs(registry: Registry, name: str, tmp_path: Path) -> None:
    from xcos.data.shards import write_shards

    out = write_shards(identity_folder(tmp_path / "faces"), tmp_path / "faces.shards", 16, 4, 0)
    check_pairs_dataset(registry.build({"type": name, "root": str(out)}, "data.train"), 16)


@case("DATASETS", "rec_pairs")
def run_rec_pairs(registry: Registry, name: str, tmp_path: Path) -> None:
    from tests.helpers.recordio_writer import insightface_records, write_rec

    per_class = [[encoded(2 * c + k) for k in range(2)] for c in range(2)]
    write_rec(tmp_path / "rec", insightface_records(per_class), "2,16,16")
    check_pairs_dataset(registry.build({"type": name, "root": str(tmp_path / "rec")}, "x"), 16)


def encoded(k: int, size: int = 16) -> bytes:
    """``save_image``'s face ``k`` as JPEG bytes, in memory."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour(k)).save(out, "JPEG")
    return out.getvalue()


@case("DATASETS", "lfw_people_pairs")
def run_lfw_people(registry: Registry, name: str, tmp_path: Path) -> None:
    root = lfw_folder(tmp_path / "lfw", size=32)
    (root / "peopleDevTrain.txt").write_text("2\nAnn\t2\nBob\t2\n")
    cfg = {
        "type": name,
        "people": str(root / "peopleDevTrain.txt"),
        "align": {"image_size": 16, "no_face": "center_crop"},
    }
    check_pairs_dataset(registry.build(cfg, "data.train"), 16)


def check_pair_set(pair_set: Any, count: int, size: int) -> None:
    assert len(pair_set) == count and pair_set.pairs.shape == (count, 2)
    assert set(pair_set.labels.tolist()) <= {0, 1}
    assert pair_set.image(0).shape == (size, size, 3)


@case("PAIR_SETS", "csv")
def run_csv(registry: Registry, name: str, tmp_path: Path) -> None:
    for k in range(3):
        save_image(tmp_path / f"{k}.png", k)
    (tmp_path / "pairs.csv").write_text("path_a,path_b,label\n0.png,1.png,1\n0.png,2.png,0\n")
    cfg = {"type": name, "path": str(tmp_path / "pairs.csv"), "folds": 2}
    pair_set = registry.build(cfg, "pair_sets")
    check_pair_set(pair_set, 2, 16)


@case("PAIR_SETS", "lfw")
def run_lfw(registry: Registry, name: str, tmp_path: Path) -> None:
    root = lfw_folder(tmp_path / "lfw")
    (root / "pairs.txt").write_text("1\nAnn 1 2\nAnn 1 Bob 1\n")
    pair_set = registry.build({"type": name, "path": str(root / "pairs.txt")}, "pair_sets")
    check_pair_set(pair_set, 2, 16)


@case("PAIR_SETS", "insightface_bin")
def run_insightface_bin(registry: Registry, name: str, tmp_path: Path) -> None:
    images = []
    for k in range(4):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), colour(k)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    path = tmp_path / "tiny.bin"
    path.write_bytes(pickle.dumps((images, [True, False])))
    pair_set = registry.build({"type": name, "path": str(path), "image_size": 8}, "pair_sets")
    check_pair_set(pair_set, 2, 8)


@case("PAIR_SETS", "pack")
def run_pack(registry: Registry, name: str, tmp_path: Path) -> None:
    from xcos.data.pack import write_pack

    faces = np.stack([np.full((3, 8, 8), 30 * k, dtype=np.uint8) for k in range(3)])
    folder = write_pack(
        tmp_path / "tiny.pack", faces, [[0, 1], [0, 2]], [1, 0], [0, 0], ["a", "b", "c"]
    )
    check_pair_set(registry.build({"type": name, "path": str(folder)}, "pair_sets"), 2, 8)


# --- training and generators --------------------------------------------------------------

OPTIMIZER_CONFIGS = {"SGD": {"lr": 0.1}, "Adam": {}, "AdamW": {}, "RMSprop": {}}


@case("OPTIMIZERS", *OPTIMIZER_CONFIGS)
def run_optimizer(registry: Registry, name: str, tmp_path: Path) -> None:
    weight = nn.Parameter(torch.ones(3))
    optimizer = registry.build(
        {"type": name, **OPTIMIZER_CONFIGS[name]}, "optimizers.main", params=[weight]
    )
    (weight**2).sum().backward()
    optimizer.step()
    assert not torch.equal(weight.detach(), torch.ones(3))


SCHEDULER_CONFIGS = {
    "StepLR": {"step_size": 1},
    "MultiStepLR": {"milestones": [1]},
    "CosineAnnealingLR": {"T_max": 2},
    "ExponentialLR": {"gamma": 0.5},
    "OneCycleLR": {"max_lr": 0.1, "total_steps": 2},
}


@case("SCHEDULERS", *SCHEDULER_CONFIGS)
def run_scheduler(registry: Registry, name: str, tmp_path: Path) -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    scheduler = registry.build(
        {"type": name, **SCHEDULER_CONFIGS[name]}, "schedulers.main", optimizer=optimizer
    )
    before = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] != before


@case("GENERATORS", "synthfaces")
def run_synthfaces(registry: Registry, name: str, tmp_path: Path) -> None:
    cfg = {
        "type": name,
        "root": str(tmp_path / "synth"),
        "identities": {"train": 2, "val": 2},
        "images_per_identity": 4,
        "pairs_per_split": 20,
        "one_region_pairs": 0,
        "image_size": 32,
    }
    registry.build(cfg, "data.synthetic")
    images = sorted((tmp_path / "synth" / "train").rglob("*.png"))
    assert images and Image.open(images[0]).size == (32, 32)


# --- the sweep ----------------------------------------------------------------------------


def test_every_component_has_a_sweep_case():
    assert uncovered() == {}, "registered components without a sweep case (or stale cases)"


def test_a_component_without_a_case_is_reported():
    registry = REGISTRIES["HEADS"]
    # as if a module of the package had registered it
    registry.register("sweep_dummy")(type("SweepDummy", (nn.Identity,), {"__module__": "xcos.x"}))
    try:
        assert uncovered() == {"HEADS": {"sweep_dummy"}}
    finally:
        del registry._entries["sweep_dummy"]
    assert uncovered() == {}


@pytest.mark.parametrize(
    ("kind", "name"),
    [(kind, name) for kind, cases in CASES.items() for name in sorted(cases)],
)
def test_component_builds_and_runs(kind, name, tmp_path, monkeypatch):
    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    CASES[kind][name](REGISTRIES[kind], name, tmp_path)
