"""The one checkpoint module (``xcos.checkpoints``): what it finds in a file, how it checks and
loads weights, its atomic writer, and the callers that go through it (``-p``, ``-r``,
``model.pretrained``, ``model.target.checkpoint``, dlib's ``.pth``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import REPO
from xcos.checkpoints import (
    check_fit,
    load_weights,
    load_weights_file,
    read_state_dict,
    state_dict_of,
    strip_wrapper_prefixes,
    write_checkpoint,
)
from xcos.config import ModelConfig, from_dict
from xcos.engine.run_checkpoint import read_run_checkpoint
from xcos.errors import CheckpointError
from xcos.models.targets import PretrainedTarget
from xcos.models.xcos_model import build_and_load

TINY_BACKBONE = {"type": "ir_se", "depth": 10, "width": 0.25, "input_size": 64}


def linear_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(3, 2).state_dict()


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("call", ["torch.load(", "torch.save("])
def test_the_package_reads_and_writes_torch_files_in_one_module(call):
    """read_checkpoint keeps weights_only=True and write_checkpoint atomicity in one place."""
    package = REPO / "src" / "xcos"
    callers = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if call in path.read_text(encoding="utf-8")
    ]
    assert callers == ["checkpoints.py"]


@pytest.mark.parametrize(
    "layout",
    [
        lambda s: s,
        lambda s: {"model": s, "config": {"name": "run"}, "threshold": 0.5, "epoch": 3},
        lambda s: {"state_dict": s, "epoch": 3, "arch": "r50"},
        lambda s: {"format": "xcos-recognizer", "version": 1, "backbone": {}, "state_dict": s},
        lambda s: {"format": "another-project", "state_dict": s},
        lambda s: {f"module.{key}": value for key, value in s.items()},
        lambda s: {"model": {f"_orig_mod.{key}": value for key, value in s.items()}},
        lambda s: {f"module._orig_mod.{key}": value for key, value in s.items()},
    ],
    ids=["plain", "xcos", "state_dict", "recognizer", "foreign-format", "ddp", "compiled", "both"],
)
def test_the_weights_are_found_in_every_accepted_layout(tmp_path, layout):
    state = linear_state()
    torch.save(layout(state), tmp_path / "w.pth")
    assert states_equal(read_state_dict(tmp_path / "w.pth", "-p"), state)


def test_a_prefix_only_some_keys_carry_is_a_real_module_name():
    state = {"module.weight": torch.zeros(1), "head.weight": torch.zeros(1)}
    assert strip_wrapper_prefixes(state) == state
    assert strip_wrapper_prefixes({}) == {}


@pytest.mark.parametrize("content", [[1, 2, 3], {"epoch": 3}, {"model": {"w": [1.0]}}])
def test_what_holds_no_state_dict_is_refused_by_name(content):
    with pytest.raises(CheckpointError, match=r"^-p 'w\.pth' does not hold a state dict"):
        state_dict_of(content, "w.pth", "-p")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"format": "xcos-recognizer", "version": 2},
            r"'r\.pth' is an 'xcos-recognizer' file of version 2; this xcos reads version 1",
        ),
        ({"format": "xcos-future", "version": 1}, r"'r\.pth' is an 'xcos-future' file, which"),
    ],
)
def test_an_xcos_file_this_version_cannot_read_is_refused(record, expected):
    with pytest.raises(CheckpointError, match=expected):
        state_dict_of({**record, "state_dict": linear_state()}, "r.pth", "model.pretrained")


# ----------------------------------------------------------------------------- checking, loading


def test_check_fit_reports_missing_unexpected_and_shapes():
    model = nn.Linear(3, 2)
    state = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as caught:
        check_fit(state, model, "'w.pth'", "the model")
    message = str(caught.value)
    assert message.startswith("'w.pth' does not fit the model (a checkpoint of another")
    assert "1 missing (first: bias)" in message and "1 unexpected (first: extra)" in message
    assert "1 with the wrong shape (file vs model) (first: weight (2, 4) vs (2, 3))" in message
    # Not strict: missing and unexpected keys are returned, not raised.
    assert check_fit({"weight": torch.zeros(2, 3)}, model, "w", strict=False) == (["bias"], [])
    with pytest.raises(CheckpointError, match="shares no parameter name"):
        check_fit({"other": torch.zeros(1)}, model, "w", strict=False)


def test_load_weights_checks_before_it_changes_anything():
    model = nn.Linear(3, 2)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    partial = {"weight": torch.ones(2, 3)}
    with pytest.raises(CheckpointError, match=r"^src does not fit the layer: 1 missing \(first"):
        load_weights(model, partial, "src", "the layer")
    assert states_equal(model.state_dict(), before)
    assert load_weights(model, partial | {"x": torch.ones(1)}, "src", strict=False) == (
        ["bias"],
        ["x"],
    )
    assert torch.equal(model.weight, torch.ones(2, 3)) and torch.equal(model.bias, before["bias"])


def test_load_weights_can_give_a_meta_module_the_files_tensors():
    with torch.device("meta"):
        model = nn.Linear(3, 2)
    state = linear_state()
    assert load_weights(model, state, "src", assign=True) == ([], [])
    assert not model.weight.is_meta and torch.equal(model.weight, state["weight"])


def test_load_weights_file_names_the_file_and_the_target(tmp_path):
    torch.save({"module.weight": torch.zeros(2, 3)}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"^model\.x '.*w\.pth' does not fit model\.y: 1 mis"):
        load_weights_file(nn.Linear(3, 2), tmp_path / "w.pth", "model.x", "model.y")


# ----------------------------------------------------------------------------- writing


def test_write_checkpoint_keeps_the_previous_file_on_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    write_checkpoint({"step": 1}, path)

    def crash(obj, stream, *args, **kwargs):
        stream.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


# ----------------------------------------------------------------------------- the callers


def test_p_loads_a_model_saved_through_a_wrapper(tmp_path):
    """-p (``build_and_load``) strips DDP's prefix, as the importers always did."""
    cfg = from_dict(ModelConfig, {"backbone": TINY_BACKBONE, "head": {"type": "xcos"}}, "model")
    torch.manual_seed(3)
    saved = build_and_load(cfg)
    wrapped = {f"module.{key}": value for key, value in saved.state_dict().items()}
    torch.save({"model": wrapped}, tmp_path / "ddp.pth")
    loaded = build_and_load(cfg, tmp_path / "ddp.pth")
    assert states_equal(loaded.state_dict(), saved.state_dict())


def test_target_and_pretrained_weights_are_checked_with_their_config_keys(tmp_path):
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "other.pth")
    backbone = {**TINY_BACKBONE, "embedding_dim": 16}
    with pytest.raises(CheckpointError, match=r"^model\.target\.checkpoint '.*other\.pth' does "):
        PretrainedTarget(str(tmp_path / "other.pth"), backbone=backbone)
    cfg = from_dict(
        ModelConfig,
        {"backbone": backbone, "head": {"type": "xcos"}, "pretrained": str(tmp_path / "other.pth")},
        "model",
    )
    with pytest.raises(CheckpointError, match=r"does not fit model\.backbone.*`xcos import`"):
        build_and_load(cfg)


def test_dlib_resnet_refuses_a_pth_of_another_network_by_name(tmp_path):
    from xcos.models.backbones.dlib_resnet import DlibResNet

    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "not_dlib.pth")
    with pytest.raises(
        CheckpointError, match=r"dlib_resnet weights '.*not_dlib\.pth' does not fit"
    ):
        DlibResNet(weights=str(tmp_path / "not_dlib.pth"))


def test_r_needs_a_training_checkpoint_not_weights_alone(tmp_path):
    torch.save({"model": linear_state()}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match=r"not an xcos training checkpoint .*use -p"):
        read_run_checkpoint(tmp_path / "weights.pth")
