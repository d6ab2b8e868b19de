"""The xCos plug-in on a frozen recognizer: cos of its embeddings, cached backbone outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import reference_threshold, require_dlib_weights
from xcos.engine.features import (
    CachedFeaturePairs,
    cached_backbone_outputs,
    with_cached_features,
)
from xcos.engine.trainer import Trainer
from xcos.errors import ConfigError
from xcos.evaluation.verification import held_out_accuracy
from xcos.models.xcos_model import build_model, split_descriptors

CPU = torch.device("cpu")

#: The demo model as a frozen "recognizer" with an embedding, trained by MSE only.
PLUGIN = {
    "model": {
        "backbone": {"embedding_dim": 32},
        "freeze_backbone": True,
        "cos": "embedding",
        "head": {"detach_cosine": False},
        "identity_head": None,
    },
    "losses": [{"type": "mse", "output": "xcos", "target": "target_cos"}],
    # "main" changes type (AdamW -> Adam), so it is replaced whole: the grid only.
    "optimizers": {"main": {"type": "Adam", "groups": ["grid"], "lr": 1e-3}},
    "data": {"train": {"flip": True}},
}


@pytest.fixture
def plugin_config(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    return tiny_config(PLUGIN)


def count_backbone_calls(model) -> list[int]:
    seen: list[int] = []
    model.backbone.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    return seen


def test_frozen_backbone_stays_in_eval_mode_without_gradients(plugin_config):
    model = build_model(plugin_config.model).train()
    assert not model.backbone.training and model.head.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert model.parameter_groups()["backbone"] == []


def test_cos_is_the_recognizer_embedding_cosine(plugin_config):
    model = build_model(plugin_config.model).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        embedding = torch.nn.functional.normalize(model.backbone(images)["embedding"], dim=1)
        out = model.compare(*split_descriptors(model.embed(images)))
    expected = (embedding[:2] * embedding[2:]).sum(dim=1)
    assert torch.allclose(out["cos"], expected, atol=1e-5)


def test_cached_outputs_give_the_same_result_as_images(plugin_config):
    model = build_model(plugin_config.model).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        cached = model.backbone_outputs(images)
        from_images = model({"image_a": images[:2], "image_b": images[2:]})
        from_cache = model(
            {
                "features_a": cached["features"][:2],
                "features_b": cached["features"][2:],
                "embedding_a": cached["embedding"][:2],
                "embedding_b": cached["embedding"][2:],
            }
        )
    for key in ("xcos", "cos", "target_cos", "attention", "patch_cosine"):
        assert torch.allclose(from_images[key], from_cache[key], atol=1e-5), key


def test_head_training_runs_the_frozen_backbone_once_per_face(plugin_config, tmp_path):
    trainer = Trainer(plugin_config, tmp_path / "run", CPU)
    assert isinstance(trainer.dataset, CachedFeaturePairs)
    images = len(trainer.dataset)
    backbone_before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    seen = count_backbone_calls(trainer.model)
    trainer.fit()  # trains, then validates from the cached validation outputs
    assert seen == []
    after = trainer.model.backbone.state_dict()
    assert all(torch.equal(backbone_before[k], after[k]) for k in after)
    # Recomputed in a new run (an image folder has no content key): the same outputs.
    second = Trainer(plugin_config, tmp_path / "again", CPU)
    assert len(second.dataset) == images
    for name in ("features", "features_flipped", "embedding", "embedding_flipped"):
        assert torch.equal(second.dataset.outputs[name], trainer.dataset.outputs[name])


def test_outputs_of_keyed_faces_are_read_back_from_the_disk_cache(plugin_config, tmp_path):
    model = build_model(plugin_config.model)
    faces = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    first = cached_backbone_outputs(model, faces.__getitem__, 5, "key-1", CPU, flip=False)
    assert list((tmp_path / "cache" / "features").glob("*.pt"))
    seen = count_backbone_calls(model)
    again = cached_backbone_outputs(model, faces.__getitem__, 5, "key-1", CPU, flip=False)
    assert seen == [] and all(torch.equal(first[k], again[k]) for k in first)
    other = cached_backbone_outputs(model, faces.__getitem__, 5, "key-2", CPU, flip=False)
    assert seen and torch.equal(other["features"], first["features"])
    with torch.no_grad():  # the backbone's weights are part of the key
        next(model.backbone.parameters()).add_(1.0)
    seen.clear()
    cached_backbone_outputs(model, faces.__getitem__, 5, "key-1", CPU, flip=False)
    assert seen


def test_cached_items_match_the_images_they_replace(plugin_config):
    from xcos.registry import DATASETS

    dataset = DATASETS.build(plugin_config.data.train, "data.train")
    model = build_model(plugin_config.model)
    cached = with_cached_features(model, dataset, CPU)
    dataset.set_epoch(2)
    cached.set_epoch(2)
    for index in range(6):
        item, image_item = cached[index], dataset[index]
        assert item["label"] == image_item["label"]
        with torch.no_grad():
            features = model.backbone_outputs(image_item["image_a"][None])["features"][0]
        # the same face and the same flip; float16 storage
        assert torch.allclose(item["features_a"], features, atol=2e-2, rtol=1e-2)


def test_a_batch_of_cached_items_is_fetched_at_once_and_equals_them_item_by_item(
    plugin_config,
):
    """``__getitems__`` (what the DataLoader calls) gathers a batch in one indexing per key:
    the same pairs, flips and labels as ``__getitem__`` key by key, collated."""
    from torch.utils.data import DataLoader, default_collate

    from xcos.registry import DATASETS

    dataset = DATASETS.build(plugin_config.data.train, "data.train")
    cached = with_cached_features(build_model(plugin_config.model), dataset, CPU)
    keys = [(3, index) for index in (5, 0, 7, 7, 2, 9, 1)]
    batch = cached.__getitems__(keys)
    expected = default_collate([cached[key] for key in keys])
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
    flips = [cached.pairs.sample(index, 3)[1:] for _, index in keys]
    assert {flip for pair in flips for flip in pair} == {True, False}  # both ways covered
    loader = DataLoader(cached, batch_size=7, sampler=keys, collate_fn=cached.collate)
    assert all(torch.equal(next(iter(loader))[key], batch[key]) for key in batch)


def test_fold_accuracy_chooses_the_threshold_on_the_other_folds():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.4, 0.6])
    labels = np.array([1, 0, 1, 0, 1, 0])
    test = np.array([False, False, False, False, True, True])
    accuracy, threshold = held_out_accuracy(scores, labels, test)
    # By hand: the training pairs 0.1, 0.2 (different) and 0.8, 0.9 (same) are split only by
    # thresholds in (0.2, 0.8): the midpoint 0.5. The inverted test pairs 0.4 (same) and 0.6
    # (different) are then both wrong. Chosen on all six pairs instead, the lowest best
    # threshold would be 0.3 (5 of 6 right) and the test accuracy 0.5.
    assert threshold == pytest.approx(0.5)
    assert accuracy == 0.0
    # the same by brute force: 0.5 on the training folds, 0.3 (the wrong answer) on all
    assert reference_threshold(scores[~test], labels[~test]) == pytest.approx((0.5, 1.0))
    assert reference_threshold(scores, labels) == pytest.approx((0.3, 5 / 6))


@pytest.mark.slow
def test_model_pretrained_loads_an_imported_recognizer(plugin_config, tmp_path):
    from xcos.models.backbones.arcface_torch import ArcFaceIResNet
    from xcos.models.importers import import_recognizer

    torch.manual_seed(1)
    original = ArcFaceIResNet(depth=18)
    torch.save(original.state_dict(), tmp_path / "backbone.pth")
    recognizer = import_recognizer(tmp_path / "backbone.pth", "iresnet18", tmp_path / "r18.pth")
    model_cfg = plugin_config.model
    model_cfg.backbone = {"type": "iresnet", "depth": 18}
    model_cfg.pretrained = str(recognizer)
    model = build_model(model_cfg)
    for key, value in original.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    model_cfg.backbone = {"type": "iresnet", "depth": 34}
    with pytest.raises(ValueError, match=r"does not fit model\.backbone"):
        build_model(model_cfg)


def test_a_trainable_copy_of_dlib_learns_against_the_frozen_original():
    from xcos.config import ModelConfig, from_dict

    require_dlib_weights()
    dlib = {"type": "dlib_resnet", "level": 1, "weights": "auto"}
    model_cfg = from_dict(
        ModelConfig,
        {
            "backbone": dlib,
            "head": {"type": "xcos", "detach_cosine": False},
            "target": {"type": "pretrained", "checkpoint": None, "backbone": dlib},
            "cos": "embedding",
            "freeze_backbone": False,
        },
        "model",
    )
    model = build_model(model_cfg).train()
    batch = {f"image_{side}": torch.rand(2, 3, 150, 150) * 2 - 1 for side in "ab"}
    out = model(batch)
    assert torch.allclose(out["cos"], out["target_cos"], atol=1e-5)  # the same weights at start
    optimizer = torch.optim.SGD(model.parameter_groups()["backbone"], lr=0.5)
    assert optimizer.param_groups[0]["params"]  # the copy is trainable
    (1 - out["cos"]).sum().backward()
    optimizer.step()
    after = model(batch)
    assert torch.equal(after["target_cos"], out["target_cos"])  # the original stays frozen
    assert not torch.allclose(after["cos"], out["cos"])


def test_resume_caches_the_outputs_of_the_restored_backbone(plugin_config, tmp_path):
    """A run started from -p weights resumes (-r alone) on that backbone's cached outputs."""
    torch.manual_seed(7)
    other = build_model(plugin_config.model)  # a backbone unlike the config's default init
    torch.save(other.state_dict(), tmp_path / "recognizer.pth")
    first = Trainer(plugin_config, tmp_path / "run", CPU, weights=tmp_path / "recognizer.pth")
    first.fit()
    resumed = Trainer(
        plugin_config, tmp_path / "run", CPU, resume=first.run_dir / "checkpoints/last.pth"
    )
    for key, value in first.dataset.outputs.items():
        assert torch.equal(resumed.dataset.outputs[key], value), key


def test_cached_features_with_a_target_that_reads_images_is_refused(tiny_config, tmp_path):
    layer = {
        "model": {
            "freeze_backbone": True,
            "target": {"type": "pretrained", "backbone": {"type": "ir", "depth": 10}},
        }
    }
    with pytest.raises(ConfigError, match=r"data\.cache_features"):
        Trainer(tiny_config(layer), tmp_path / "run", CPU)


def test_calibrated_xcos_is_the_recognizers_cosine_and_keeps_the_heads_maps(plugin_config):
    import dataclasses

    torch.manual_seed(3)
    plain = build_model(plugin_config.model).eval()
    calibrated = build_model(dataclasses.replace(plugin_config.model, calibrate=True)).eval()
    calibrated.load_state_dict(plain.state_dict())
    images = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        raw = plain.compare(*split_descriptors(plain.embed(images)))
        out = calibrated.compare(*split_descriptors(calibrated.embed(images)))
    assert torch.allclose(out["xcos"], out["cos"], atol=1e-5)  # the recognizer's own score
    assert torch.allclose(out["head_xcos"], raw["xcos"])
    assert torch.equal(out["attention"], raw["attention"])
    shares = lambda d: d / d.sum(dim=(1, 2), keepdim=True)  # noqa: E731
    assert torch.allclose(shares(out["difference"]), shares(raw["difference"]), atol=1e-5)
    total = (out["attention"] * out["patch_cosine"]).sum(dim=(1, 2))
    assert torch.allclose(total, out["xcos"], atol=1e-6)  # still xCos = sum(attention x cosine)


def test_calibration_needs_the_recognizers_cosine_and_a_head_score_to_train(
    tiny_config, plugin_config, tmp_path
):
    with pytest.raises(ConfigError, match=r"model\.calibrate"):
        build_model(tiny_config({"model": {"calibrate": True}}).model, num_classes=8)
    config = tiny_config(PLUGIN, {"model": {"calibrate": True}})  # mse still reads xcos
    with pytest.raises(ConfigError, match="head_xcos"):
        Trainer(config, tmp_path / "run", CPU)
    head_loss = {"losses": [{"type": "mse", "output": "head_xcos", "target": "target_cos"}]}
    monitor = {"validation": {"monitor": {"pair_set": "synth_val", "score": "head_xcos"}}}
    config = tiny_config(PLUGIN, {"model": {"calibrate": True}}, head_loss, monitor)
    metrics = Trainer(config, tmp_path / "ok", CPU).fit()
    scores = metrics["synth_val"]
    assert scores["xcos"]["accuracy"] == scores["cos"]["accuracy"]
    assert "head_xcos" in scores
