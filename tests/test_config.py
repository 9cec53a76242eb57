"""Config helper: precedence, coercion, unknown keys, ranges, dry-run."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gen.config import ConfigError, build, field, from_dict, parse_config, to_dict


@dataclass
class Inner:
    channels: int = field(32, help="base channels", min=8)
    attention: list[int] = field(default_factory=lambda: [2, 3])


@dataclass
class Cfg:
    lr: float = field(1e-3, help="learning rate", min=0.0)
    steps: int = field(100, min=1)
    schedule: str = field("linear", choices=("linear", "cosine"))
    use_ema: bool = field(True)
    sizes: list[int] = field(default_factory=lambda: [1000, 2000])
    name: str | None = field(None)
    extra: dict = field(default_factory=dict)
    model: Inner = field(default_factory=Inner)


def test_defaults_then_file_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.01\nsteps: 5\nmodel:\n  channels: 64\n")
    cfg = parse_config(Cfg, ["--config", str(f), "--steps", "7", "--model.attention", "1,2,3"])
    assert cfg.lr == 0.01  # from the file
    assert cfg.steps == 7  # flag beats file
    assert cfg.model.channels == 64  # nested key from the file
    assert cfg.model.attention == [1, 2, 3]
    assert cfg.schedule == "linear"  # default untouched


def test_flag_forms_and_types():
    cfg = parse_config(Cfg, ["--use_ema", "false", "--sizes=10,20", "--name", "x", "--steps", "1e3"])
    assert cfg.use_ema is False and cfg.sizes == [10, 20] and cfg.name == "x" and cfg.steps == 1000
    assert parse_config(Cfg, ["--use-ema"]).use_ema is True  # dashes accepted, bare bool flag = true
    assert parse_config(Cfg, ["--name", "none"]).name is None


def test_unknown_flag_lists_valid_keys(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, ["--stepz", "3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'stepz'" in err and "Did you mean steps" in err and "model.channels" in err


def test_abbreviation_is_not_accepted(capsys):
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--sched", "cosine"])
    assert "unknown config key 'sched'" in capsys.readouterr().err


def test_unknown_yaml_key_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  chanels: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.chanels' in .*bad.yaml.*model.channels"):
        build(Cfg, f)


@pytest.mark.parametrize("overrides, message", [
    ({"schedule": "quadratic"}, "schedule: 'quadratic' is not one of linear, cosine"),
    ({"steps": 0}, "steps: 0 is below the minimum 1"),
    ({"model.channels": 4}, "model.channels: 4 is below the minimum 8"),
    ({"steps": "many"}, "steps: expected an integer"),
    ({"steps": 2.5}, "steps: expected an integer"),
    ({"use_ema": "maybe"}, "use_ema: expected true/false"),
])
def test_bad_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(Cfg, overrides=overrides)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build(Cfg, tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        build(Cfg, f)


def test_dry_run_prints_resolved(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, ["--steps", "9", "--dry-run"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "steps: 9" in out and "channels: 32" in out


def test_round_trip_dict():
    cfg = build(Cfg, overrides={"lr": 0.5, "model.channels": 16})
    again = from_dict(Cfg, to_dict(cfg))
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        from_dict(Cfg, {**to_dict(cfg), "bogus": 1})


def test_help_lists_keys_with_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--help"])
    out = capsys.readouterr().out
    assert "--model.channels int (default: 32)" in out and "learning rate" in out and "{linear,cosine}" in out


def test_dict_field_from_nested_yaml(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("extra:\n  epochs: 3\n  opt: {lr: 0.1}\n")
    assert build(Cfg, f).extra == {"epochs": 3, "opt": {"lr": 0.1}}
    assert build(Cfg, overrides={"extra": "{a: 1}"}).extra == {"a": 1}
