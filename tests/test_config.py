"""Config loading: presets, dotted overrides, clean errors listing the valid keys, save/load round trip."""

import pytest

from motionrep.config import (
    ConfigError,
    EMASchedule,
    config_diff,
    list_presets,
    load_config,
    parse_config,
    save_config,
    to_yaml,
)


def test_presets_load():
    assert {"micro", "dino-synth-tiny"} <= set(list_presets())
    cfg = load_config("dino-synth-tiny")
    assert cfg.method.name == "dino" and cfg.model.name == "vit-synth-tiny"
    assert type(cfg.method).__name__ == "DINOConfig"


def test_overrides_are_typed_and_applied():
    cfg = load_config(
        "micro", ["train.steps=7", "optim.betas=[0.8,0.95]", "ema.schedule=constant", "method.out_dim=128"]
    )
    assert cfg.train.steps == 7 and cfg.optim.betas == [0.8, 0.95]
    assert cfg.ema.schedule is EMASchedule.constant and cfg.method.out_dim == 128
    assert cfg.model.overrides() == {"drop_path_rate": 0.0}


@pytest.mark.parametrize(
    ("override", "key", "listed"),
    [
        ("train.stepz=3", "train.stepz", ["steps (int)", "batch_size (int)", "log_every"]),
        ("method.tempz=1", "method.tempz", ["teacher_temp (float)", "out_dim (int)"]),
        ("trainz.steps=1", "trainz", ["train", "optim", "method"]),
    ],
)
def test_unknown_key_lists_valid_keys(override, key, listed):
    with pytest.raises(ConfigError, match="unknown config key") as err:
        load_config("micro", [override])
    msg = str(err.value)
    assert repr(key) in msg and all(word in msg for word in listed)


def test_wrong_type_names_key_and_lists_section():
    with pytest.raises(ConfigError, match="wrong type for config key 'train.steps'") as err:
        load_config("micro", ["train.steps=abc"])
    assert "Valid keys of 'train'" in str(err.value)
    with pytest.raises(ConfigError, match="expected one of"):
        load_config("micro", ["ema.schedule=linear"])


def test_user_mistakes_give_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="presets: .*micro"):
        load_config("no-such-preset")
    with pytest.raises(ConfigError, match="registered methods: .*dino"):
        load_config("micro", ["method.name=no_such_method"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("micro", ["train.steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="batch_size"):
        load_config("micro", ["train.batch_size=0"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(bad)
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("train:\n  steps: 3\n")
    with pytest.raises(ConfigError, match="method.name"):
        load_config(nameless)


def test_save_load_round_trip(tmp_path):
    cfg = load_config("dino-synth-tiny", ["train.steps=11", "ema.schedule=constant", "optim.warmup_steps=3"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg and config_diff(again, cfg) == [] and parse_config(to_yaml(cfg)) == cfg
    assert config_diff(load_config(path, ["train.seed=5", "method.out_dim=64"]), cfg) == [
        "method.out_dim",
        "train.seed",
    ]
