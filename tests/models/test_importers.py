"""Importing users' pretrained weights: arcface_torch / InsightFace_Pytorch recognizers and the
original xCos releases, checked against the documented key lists with random tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import xcos.models.backbones.arcface_torch  # noqa: F401  (registers iresnet)
from tests.conftest import MaliciousPayload, require_shared
from xcos.checkpoints import load_weights_file
from xcos.config import ModelConfig, from_dict
from xcos.models.backbones.arcface_torch import ARCFACE_LAYERS
from xcos.models.importers import (
    ARCHITECTURES,
    import_recognizer,
    import_xcos_released,
    load_recognizer,
)
from xcos.models.xcos_model import build_model
from xcos.registry import BACKBONES

KeyList = list[tuple[str, tuple[int, ...]]]


@pytest.fixture(scope="module")
def documented() -> dict[str, KeyList]:
    with require_shared("docs/checkpoint-keys.json").open() as f:
        return {name: [(k, tuple(s)) for k, s in keys] for name, keys in json.load(f).items()}


def random_state(keys: KeyList, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the documented shapes, scaled so deep networks stay finite."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5  # variances must be positive
        elif len(shape) >= 2:  # conv / linear: unit gain
            state[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):  # BN scale or PReLU slope
            state[key] = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:  # biases, running means
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def constant_state(keys: KeyList) -> dict[str, torch.Tensor]:
    """Documented keys and shapes whose values do not matter: each tensor is a stride-0 view of
    one element, so building, saving and reading it costs nothing (for the refusal tests)."""
    state = {}
    for key, shape in keys:
        dtype = torch.long if key.endswith("num_batches_tracked") else torch.float32
        state[key] = torch.ones((), dtype=dtype).expand(shape)
    return state


# ----------------------------------------------------------------------------- recognizers

# (documented list, arch, how the file wraps the state dict)
RECOGNIZERS = [
    ("arcface_torch_iresnet50", "iresnet50", "plain"),
    ("arcface_torch_iresnet100", "iresnet100", "ddp"),
    ("ir_se50_TreB1eN_Backbone", "ir_se50", "state_dict"),
]


def wrap(state: dict[str, torch.Tensor], how: str) -> dict:
    if how == "ddp":  # DataParallel / DDP saves prefix every key with "module."
        return {f"module.{k}": v for k, v in state.items()}
    return {"state_dict": state} if how == "state_dict" else state


@pytest.fixture(scope="module")
def iresnet50_file(documented, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "backbone.pth"
    torch.save(constant_state(documented["arcface_torch_iresnet50"]), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("name", "arch", "how"), RECOGNIZERS)
def test_import_and_load_recognizer(documented, tmp_path, name, arch, how) -> None:
    keys = documented[name]
    state = random_state(keys, seed=1)
    weights = tmp_path / "weights.pth"
    torch.save(wrap(state, how), weights)

    out = import_recognizer(weights, arch, tmp_path / "imported.pth")
    record = torch.load(out, weights_only=True)
    assert (record["format"], record["version"]) == ("xcos-recognizer", 1)
    assert record["backbone"] == ARCHITECTURES[arch]

    model, cfg = load_recognizer(out)
    assert cfg == ARCHITECTURES[arch]
    assert not model.training
    loaded = model.state_dict()
    assert {k: tuple(v.shape) for k, v in loaded.items()} == dict(keys)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with torch.no_grad():
        result = model(torch.randn(2, 3, 112, 112))
    assert result["grid"].shape == (2, 512, 7, 7)
    assert result["embedding"].shape == (2, 512)
    assert torch.isfinite(result["embedding"]).all()


@pytest.mark.parametrize("depth", [18, 34])
def test_small_iresnets_run(depth) -> None:
    model = BACKBONES.build({"type": "iresnet", "depth": depth}, "model.backbone").eval()
    image = torch.randn(1, 3, 112, 112)
    caught = []
    handle = model.grid_layer.register_forward_hook(lambda m, i, o: caught.append(o))
    with torch.no_grad():
        out = model(image)
        handle.remove()
        # by hand (not through forward_features): the stem, then layer1..layer4, before bn2
        by_hand = model.prelu(model.bn1(model.conv1(image)))
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            by_hand = layer(by_hand)
    assert model.grid_layer is model.layer4
    assert len(caught) == 1 and torch.equal(out["grid"], caught[0])
    torch.testing.assert_close(out["grid"], by_hand, rtol=1e-5, atol=1e-5)
    assert out["grid"].shape == (1, 512, 7, 7) and out["embedding"].shape == (1, 512)


@pytest.mark.parametrize("depth", [18, 34, 200])
def test_iresnet_key_structure(depth) -> None:
    with torch.device("meta"):  # full width without allocating or initialising anything
        model = BACKBONES.build({"type": "iresnet", "depth": depth}, "model.backbone")
    state = model.state_dict()
    stages = zip(ARCFACE_LAYERS[depth], (64, 64, 128, 256), (64, 128, 256, 512), strict=True)
    for index, (blocks, in_channels, channels) in enumerate(stages):
        layer = f"layer{index + 1}"
        blocks_found = {int(k.split(".")[1]) for k in state if k.startswith(layer + ".")}
        assert blocks_found == set(range(blocks))
        assert state[f"{layer}.0.downsample.0.weight"].shape == (channels, in_channels, 1, 1)
        assert not any(k.startswith(f"{layer}.1.downsample") for k in state)
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert state["features.running_var"].shape == (512,)


# ----------------------------------------------------------------------------- refusals


def test_unknown_architecture_lists_choices(iresnet50_file, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"'resnet50'.*iresnet18, iresnet34.*ir_se50"):
        import_recognizer(iresnet50_file, "resnet50", tmp_path / "out.pth")


def test_wrong_architecture_names_the_keys(iresnet50_file, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"'iresnet100'.*missing \(first: layer2\.4\.") as err:
        import_recognizer(iresnet50_file, "iresnet100", tmp_path / "out.pth")
    message = str(err.value)
    assert "backbone.pth" in message and "'iresnet100'" in message
    assert "missing (first: layer2.4." in message
    assert not (tmp_path / "out.pth").exists()

    with pytest.raises(
        ValueError, match=r"missing \(first: input_layer.*unexpected \(first: conv1"
    ):
        import_recognizer(iresnet50_file, "ir_se50", tmp_path / "out.pth")


def test_wrong_shape_is_reported(documented, tmp_path) -> None:
    state = constant_state(documented["arcface_torch_iresnet50"])
    state["fc.weight"] = torch.zeros(256, 25088)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"1 with the wrong shape.*fc\.weight \(256, 25088\)"):
        import_recognizer(tmp_path / "w.pth", "iresnet50", tmp_path / "out.pth")


@pytest.mark.parametrize("content", [{"epoch": 3, "arch": "r50"}, [1, 2, 3]])
def test_not_a_state_dict(tmp_path, content) -> None:
    torch.save(content, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"w\.pth.*does not hold a state dict"):
        import_recognizer(tmp_path / "w.pth", "iresnet50", tmp_path / "out.pth")


def test_unreadable_and_missing_files(tmp_path) -> None:
    (tmp_path / "w.pth").write_text("not a torch file")
    with pytest.raises(ValueError, match=r"w\.pth': not a PyTorch checkpoint"):
        import_recognizer(tmp_path / "w.pth", "iresnet50", tmp_path / "out.pth")
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        import_recognizer(tmp_path / "absent.pth", "iresnet50", tmp_path / "out.pth")


def test_pickle_that_runs_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "marker"
    torch.save({"state_dict": {"conv1.weight": MaliciousPayload(marker)}}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth': not a PyTorch checkpoint .*_leave_marker"):
        import_recognizer(tmp_path / "evil.pth", "iresnet50", tmp_path / "out.pth")
    with pytest.raises(ValueError, match=r"evil\.pth"):
        load_recognizer(tmp_path / "evil.pth")
    assert not marker.exists()


def test_load_recognizer_needs_an_imported_file(iresnet50_file) -> None:
    with pytest.raises(ValueError, match=r"backbone\.pth.*not an xcos-recognizer file"):
        load_recognizer(iresnet50_file)


# ----------------------------------------------------------------------------- xCos releases


@pytest.fixture(scope="module")
def released(documented, tmp_path_factory):
    """(original state dict, imported checkpoint path, our model loaded from it)."""
    folder = tmp_path_factory.mktemp("released")
    source = random_state(documented["xcos_released_checkpoint_state_dict"], seed=2)
    torch.save({"state_dict": source}, folder / "xcos_released.pth")
    out = import_xcos_released(folder / "xcos_released.pth", folder / "xcos_model.pth")
    config = torch.load(out, weights_only=True)["config"]
    model = build_model(from_dict(ModelConfig, config["model"], "model")).eval()
    missing, unexpected = load_weights_file(model, out, "-p", strict=False)
    assert (missing, unexpected) == ([], [])
    return source, out, model


@pytest.mark.slow
def test_released_checkpoint_loads_completely(released) -> None:
    source, out, model = released
    record = torch.load(out, weights_only=True)
    assert set(record["model"]) == set(model.state_dict())
    assert record["config"]["model"]["head"]["symmetric"] is False
    assert record["config"]["model"]["target"]["checkpoint"] is None
    own = model.state_dict()
    for ours, theirs in [
        ("backbone.body.23.res_layer.5.fc2.weight", "backbone.body.23.res_layer.5.fc2.weight"),
        ("backbone.output_layer.3.weight", "backbone.output_layer.3.weight"),
        ("target.network.output_layer.3.weight", "backbone_target.output_layer.3.weight"),
        ("head.grid.0.weight", "backbone.conv1x1.0.weight"),
        ("head.attention.joint.1.0.weight", "attention.attention.3.weight"),
    ]:
        assert torch.equal(own[ours], source[theirs]), ours
    with torch.no_grad():
        image = torch.randn(1, 3, 112, 112)
        outputs = model({"image_a": image, "image_b": image.flip(-1)})
    assert outputs["attention"].shape == (1, 7, 7)
    assert torch.isfinite(outputs["xcos"]).all() and torch.isfinite(outputs["target_cos"]).all()


def _conv_bn_prelu(x, src, conv, bn, prelu, padding):
    """The original layer: conv WITH bias -> BN (eval) -> PReLU (possibly one shared slope)."""
    x = F.conv2d(x, src[f"{conv}.weight"], src[f"{conv}.bias"], padding=padding)
    x = F.batch_norm(
        x,
        src[f"{bn}.running_mean"],
        src[f"{bn}.running_var"],
        src[f"{bn}.weight"],
        src[f"{bn}.bias"],
        training=False,
        eps=1e-5,
    )
    return F.prelu(x, src[f"{prelu}.weight"])


def _original_head(src, spatial_a, spatial_b):
    """The original xCos head in eval mode, written directly from its layer list."""
    grid_a, grid_b = (
        _conv_bn_prelu(x, src, "backbone.conv1x1.0", "backbone.conv1x1.1", "backbone.conv1x1.2", 0)
        for x in (spatial_a, spatial_b)
    )
    enc = "attention.embedding_net"
    enc_a, enc_b = (
        _conv_bn_prelu(g, src, f"{enc}.0", f"{enc}.1", f"{enc}.2", 1) for g in (grid_a, grid_b)
    )
    att = "attention.attention"
    hidden = _conv_bn_prelu(
        torch.cat([enc_a, enc_b], 1), src, f"{att}.0", f"{att}.1", f"{att}.2", 1
    )
    logits = _conv_bn_prelu(hidden, src, f"{att}.3", f"{att}.4", f"{att}.5", 1)
    batch = logits.shape[0]
    attention = torch.softmax(logits.reshape(batch, -1), dim=1).reshape(batch, 7, 7)
    cosine = (F.normalize(grid_a, dim=1) * F.normalize(grid_b, dim=1)).sum(1)
    return grid_a, cosine, attention, (cosine * attention).sum(dim=(1, 2))


@pytest.mark.slow
def test_released_head_is_numerically_the_original(released) -> None:
    source, _, model = released
    g = torch.Generator().manual_seed(3)
    spatial_a, spatial_b = torch.randn(2, 3, 512, 7, 7, generator=g)
    with torch.no_grad():
        grid_ref, cosine_ref, attention_ref, xcos_ref = _original_head(source, spatial_a, spatial_b)
        grid_a = model.head.grid_features(spatial_a)
        ours = model.head(grid_a, model.head.grid_features(spatial_b))
    torch.testing.assert_close(grid_a, grid_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["patch_cosine"], cosine_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["attention"], attention_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["xcos"], xcos_ref, atol=1e-5, rtol=0)
    assert attention_ref.std() > 1e-3  # random weights give a non-uniform map worth comparing


def test_released_with_missing_attention_is_refused(documented, tmp_path) -> None:
    source = constant_state(documented["xcos_released_checkpoint_state_dict"])
    del source["attention.attention.3.weight"]
    torch.save({"state_dict": source}, tmp_path / "release.pth")
    with pytest.raises(
        ValueError, match=r"release\.pth.*1 missing \(first: head\.attention\.joint"
    ):
        import_xcos_released(tmp_path / "release.pth", tmp_path / "out.pth")
