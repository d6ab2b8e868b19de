"""The composed model and its optimizers: dicts in and out, parameter groups, weight decay."""

import pytest
import torch

from tests.conftest import DEMO_CONFIG
from xcos.config import load_config
from xcos.engine.optim import build_optimizers, build_schedulers
from xcos.models.xcos_model import build_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = load_config(DEMO_CONFIG, overrides=["model.backbone.input_size=64"])
    return build_model(config.model, num_classes=5).eval()


def test_identical_images_score_one_and_outputs_are_a_dict(model):
    images = torch.randn(2, 3, 64, 64)
    batch = {"image_a": images, "image_b": images.clone()}
    out = model(batch)
    assert torch.allclose(out["xcos"], torch.ones(2), atol=1e-5)
    assert torch.allclose(out["target_cos"], torch.ones(2), atol=1e-5)
    assert "logits" not in out  # no identities in the batch, no identity loss
    labelled = batch | {"identity_a": torch.tensor([0, 1]), "identity_b": torch.tensor([2, 3])}
    out = model(labelled)
    assert out["logits"].shape == (4, 5) and out["identity"].tolist() == [0, 1, 2, 3]
    assert out["patch_cosine"].shape == out["attention"].shape == (2, 4, 4)


def test_parameter_groups_cover_every_trainable_parameter_once(model):
    groups = model.parameter_groups()
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(groups[name] for name in ("backbone", "grid", "attention", "identity_head"))


def test_no_weight_decay_on_batchnorm_and_bias(model):
    cfgs = {
        "main": {
            "type": "SGD",
            "groups": ["backbone", "grid", "identity_head"],
            "lr": 0.1,
            "weight_decay": 5e-4,
        },
        "attention": {"type": "Adam", "groups": ["attention"], "lr": 1e-3},
    }
    optimizers = build_optimizers(cfgs, model.parameter_groups())
    decayed, free = optimizers["main"].param_groups
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    bn_weight = model.backbone.input_layer[1].weight
    assert any(p is bn_weight for p in free["params"])
    assert all(p.ndim > 1 for p in decayed["params"])
    with pytest.raises(
        ValueError, match=r"no optimizer updates the parameter group\(s\) \['attention'\]"
    ):
        build_optimizers({"main": cfgs["main"]}, model.parameter_groups())
    with pytest.raises(ValueError, match=r"already updated by optimizers\.main"):
        build_optimizers({"main": cfgs["main"], "again": cfgs["main"]}, model.parameter_groups())


def test_warmup_then_schedule_per_step(model):
    optimizers = build_optimizers({"main": {"type": "SGD", "lr": 1.0}}, model.parameter_groups())
    schedulers = build_schedulers(
        {
            "main": {
                "type": "StepLR",
                "step_size": 100,
                "gamma": 0.1,
                "interval": "step",
                "warmup": 4,
                "warmup_factor": 0.25,
            }
        },
        optimizers,
    )
    rates = []
    for _ in range(6):
        rates.append(optimizers["main"].param_groups[0]["lr"])
        optimizers["main"].step()
        schedulers["main"].step("step")
        schedulers["main"].step("epoch")  # ignored: this scheduler steps per iteration
    assert rates == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0])
