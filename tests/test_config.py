"""Config layering, overrides and validation; registry errors."""

import json

import pytest

from tests.conftest import DEMO_CONFIG, REPO
from xcos.config import config_diff, deep_merge, load_config, parse_override
from xcos.errors import ConfigError
from xcos.registry import BACKBONES, Registry


def demo() -> dict:
    return json.loads(DEMO_CONFIG.read_text())


def test_deep_merge_nested_and_later_wins():
    base = {"a": {"b": 1, "c": 2}, "d": [1, 2]}
    merged = deep_merge(deep_merge(base, {"a": {"b": 5}, "d": [3]}), {"a": {"c": 7}})
    assert merged == {"a": {"b": 5, "c": 7}, "d": [3]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1, 2]}  # inputs untouched


def test_parse_override_json_else_string():
    assert parse_override("trainer.epochs=3") == (["trainer", "epochs"], 3)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b=null") == (["a", "b"], None)
    assert parse_override("a=data/x.csv") == (["a"], "data/x.csv")
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        parse_override("no_equals_sign")


def test_layers_and_overrides(tmp_path):
    diff = tmp_path / "diff.json"
    diff.write_text(json.dumps({"trainer": {"epochs": 7, "amp": "none"}, "seed": 5}))
    later = tmp_path / "later.json"
    later.write_text(json.dumps({"trainer": {"epochs": 8}}))
    config = load_config(DEMO_CONFIG, [diff, later], ["trainer.epochs=3", "losses.1.weight=0.25"])
    assert config.trainer.epochs == 3
    assert config.trainer.amp == "none"
    assert config.seed == 5
    assert config.losses[1]["weight"] == 0.25
    assert config.model.backbone["type"] == "ir_se"
    base = demo()
    assert (base["trainer"]["epochs"], base["trainer"]["amp"], base["seed"]) == (5, "bf16", 0)
    weighted = json.loads(json.dumps(base["losses"]))
    weighted[1]["weight"] = 0.25
    # every leaf that differs, once, old -> new: the template's 5 -> the --set 3 (the layers'
    # 7 and 8 are overridden), and a list is one leaf
    assert config_diff(base, config.raw) == [
        f"losses: {json.dumps(base['losses'])} -> {json.dumps(weighted)}",
        "seed: 0 -> 5",
        'trainer.amp: "bf16" -> "none"',
        "trainer.epochs: 5 -> 3",
    ]


def test_loading_has_no_side_effects(tmp_path):
    config = load_config(DEMO_CONFIG, overrides=[f"data.synthetic.root={tmp_path}/never"])
    assert not (tmp_path / "never").exists()
    assert config.data.synthetic["root"].endswith("never")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epoch=3", r"trainer\.epoch: unknown key.*Did you mean 'epochs'"),
        ("trainer.epochs=three", r"trainer\.epochs: expected int, got str"),
        ("trainer.amp=fp8", r"trainer\.amp: expected"),
        ("model.backbone.depht=50", r"model\.backbone\.depht: unknown key.*'depth'"),
        ("model.backbone.width=wide", r"model\.backbone\.width: expected float"),
        (
            "model.backbone.type=ir_se_50",
            r"model\.backbone\.type: unknown backbone 'ir_se_50'.*ir, ir_se",
        ),
        ("model.head.type=xcoss", r"model\.head\.type: unknown head.*Did you mean 'xcos'"),
        ("losses.0.type=mse2", r"losses\.0\.type: unknown loss"),
        (
            "optimizers.main.type=SDG",
            r"optimizers\.main\.type: unknown optimizer.*Did you mean 'SGD'",
        ),
        ("optimizers.main.groups=backbone", r"optimizers\.main\.groups: expected"),
        ("schedulers.main.interval=hour", r"schedulers\.main\.interval: expected"),
        ("validation.monitor.pair_sett=x", r"validation\.monitor\.pair_sett: unknown key"),
        ("unknown_section=1", r"^unknown_section: unknown key"),
    ],
)
def test_validation_errors_name_the_path(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEMO_CONFIG, overrides=[override])


def test_missing_required_key():
    config = demo()
    del config["model"]["backbone"]
    with pytest.raises(ConfigError, match=r"model\.backbone: required key is missing"):
        load_config(config)
    config = demo()
    del config["data"]["train"]["root"]
    with pytest.raises(ConfigError, match=r"data\.train\.root: required key is missing"):
        load_config(config)


def test_injected_keys_are_refused():
    with pytest.raises(ConfigError, match=r"model\.head\.in_channels: set by xcos itself"):
        load_config(DEMO_CONFIG, overrides=["model.head.in_channels=3"])


def test_missing_and_unreadable_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",\n  "seed": }')
    with pytest.raises(ConfigError, match=r"bad\.json: invalid JSON at line 2"):
        load_config(bad)
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_config(not_object)


def test_registry_duplicate_and_unknown():
    registry = Registry("widget")

    @registry.register("a")
    class A:
        def __init__(self, size: int = 1) -> None:
            self.size = size

    with pytest.raises(KeyError, match="registered twice"):
        registry.register("a")(A)
    assert registry.build({"type": "a", "size": 3}, "cfg").size == 3
    with pytest.raises(ConfigError, match=r"cfg\.type: unknown widget 'b'. Registered: a\."):
        registry.build({"type": "b"}, "cfg")
    with pytest.raises(ConfigError, match=r"cfg\.type: missing"):
        registry.build({"size": 3}, "cfg")
    assert "ir_se" in BACKBONES


def test_changing_a_component_type_replaces_the_section():
    merged = deep_merge(
        {"s": {"type": "CosineAnnealingLR", "T_max": 10, "interval": "step"}},
        {"s": {"type": "StepLR", "step_size": 2}},
    )
    assert merged == {"s": {"type": "StepLR", "step_size": 2}}
    assert deep_merge({"s": {"type": "A", "x": 1}}, {"s": {"x": 2}}) == {"s": {"type": "A", "x": 2}}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    config = load_config(path)
    assert config.name and config.model.head["type"] == "xcos"


def test_every_shipped_config_loads_and_the_dlib_diffs_give_what_they_say():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*.json")):
        load_config(str(path))
    for path in sorted((root / "explain").glob("*.json")):
        base = "xcos_dlib_lfw.json" if path.name.startswith("dlib_") else "demo_synthetic.json"
        load_config(str(root / base), [str(path)])
    dlib = load_config(str(root / "xcos_dlib_lfw.json"))
    assert dlib.model.backbone["level"] == 2 and dlib.model.calibrate and dlib.data.effects
    earlier = load_config(
        str(root / "xcos_dlib_lfw.json"), [str(root / "explain/dlib_level1.json")]
    )
    assert earlier.model.backbone["level"] == 1 and not earlier.model.calibrate
    assert earlier.data.effects is None and [loss["output"] for loss in earlier.losses] == ["xcos"]
