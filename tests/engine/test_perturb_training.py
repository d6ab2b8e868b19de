"""Training with B* (data.perturb): the model's outputs about B*, a few real steps, and the
frozen-backbone path whose B* outputs are computed once and cached."""

from __future__ import annotations

import math

import torch

from xcos.engine.trainer import Trainer
from xcos.models.geometry import box_coverage, grid_edges

PERTURB = {
    "data": {"perturb": {"paste": 0.5, "side": [0.2, 0.4], "variants": 3, "seed": 0}},
    "losses": [
        {"type": "cross_entropy", "output": "logits", "target": "identity", "weight": 1.0},
        {"type": "mse", "output": "xcos", "target": "target_cos", "weight": 1.0},
        {"type": "locality", "weight": 1.0},
        {"type": "pointing", "weight": 0.1},
        {
            "type": "mse",
            "output": "perturbed_xcos",
            "target": "target_cos",
            "where": "perturb_cover",
            "name": "covered_mse",
        },
        {"type": "covered_attention", "weight": 0.1},
    ],
}


def test_training_with_perturbed_faces_reads_every_loss(tiny_config, tmp_path):
    config = tiny_config(PERTURB, overrides=("model.head.norm_prior=true",))
    trainer = Trainer(config, tmp_path, torch.device("cpu"))
    batch = next(iter(trainer.epoch_loader()))
    outputs = trainer.model(batch)
    for key in ("perturbed_patch_cosine", "perturbed_difference", "perturbed_attention"):
        assert outputs[key].shape == outputs["patch_cosine"].shape
    assert outputs["perturbed_xcos"].shape == outputs["xcos"].shape
    backbone = trainer.model.backbone  # the losses' cells are where the maps' cells sit
    edges = torch.tensor(grid_edges(backbone) / backbone.input_size, dtype=torch.float32)
    expected = box_coverage(batch["perturb_box"], edges)
    torch.testing.assert_close(outputs["perturb_coverage"], expected)
    before = [p.detach().clone() for p in trainer.model.head.parameters()]
    trainer.fit()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    for name in ("locality", "pointing", "covered_mse", "covered_attention"):
        assert math.isfinite(float(last[header.index(f"train/{name}")]))
    after = list(trainer.model.head.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_frozen_backbone_caches_the_outputs_of_b_star(tiny_config, tmp_path):
    frozen = {**PERTURB, "model": {"freeze_backbone": True}, "data": {**PERTURB["data"]}}
    frozen["data"]["cache_features"] = True
    frozen["losses"] = [PERTURB["losses"][1], PERTURB["losses"][2], PERTURB["losses"][4]]
    config = tiny_config(frozen, overrides=("model.identity_head=null",))
    trainer = Trainer(config, tmp_path, torch.device("cpu"))
    cached = trainer.dataset
    pairs = cached.pairs
    model = trainer.model.eval()
    for key in [(0, 0), (0, 5), (1, 9)]:
        item = cached[key]
        epoch, index = key
        other, _, flip_b = pairs.sample(index, epoch)
        rng = __import__("numpy").random.default_rng([pairs.seed, epoch, index, 1])
        variant = int(rng.integers(pairs.perturb.variants))
        face = pairs.perturbed_face(other, variant, flip_b)
        with torch.no_grad():
            expected = model.backbone.forward_features(face[None])[0]
        # cached as float16, from the face rounded to uint8
        torch.testing.assert_close(item["features_perturbed"], expected, atol=1e-2, rtol=1e-2)
    trainer.fit()
