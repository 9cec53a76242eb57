"""Config helper: precedence, coercion, unknown keys, ranges, dry-run."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from echosynth.gen.core.config import ConfigError, build, field, from_dict, parse_config, to_dict


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


@dataclass
class Floats:
    lr: float = field(1e-3, min=0.0)
    scales: list[float] = field(default_factory=lambda: [1.0])
    bound: float = field(float("inf"), finite=False, help="inf allowed: no bound")
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize("key, value", [("lr", "nan"), ("lr", "inf"), ("lr", "-inf"), ("scales", "1,nan"), ("lr", "NaN")])
def test_non_finite_floats_are_refused_naming_the_key(key, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        parse_config(Floats, [f"--{key}", value])  # "-inf" as its own word, not taken for an option
    assert e.value.code == 2 and f"{key}: " in capsys.readouterr().err
    f = tmp_path / "c.yaml"
    f.write_text(f"{key}: .nan\n" if key == "lr" else "scales: [1.0, .inf]\n")  # YAML's own spellings
    with pytest.raises(ConfigError, match=f"{key}: .* is not a finite number"):
        build(Floats, f)
    with pytest.raises(ConfigError, match="not a finite number"):
        from_dict(Floats, {"lr": float("nan")})


def test_a_field_may_allow_non_finite_values():
    assert build(Floats).bound == float("inf")
    assert build(Floats, overrides={"bound": "-inf"}).bound == float("-inf")
    with pytest.raises(SystemExit):  # a negative number after a key is its value (below the minimum here)
        parse_config(Floats, ["--lr", "-1e-3"])


def test_single_dash_and_stray_words_get_a_precise_message(capsys):
    for argv, msg in ((["-lr", "1"], "unknown option '-lr': did you mean '--lr'?"),
                      (["-inner.channels", "8"], "did you mean '--inner.channels'?"),
                      (["-q"], "unknown option '-q': config keys take two dashes"),
                      (["oops"], "unexpected argument 'oops'")):
        with pytest.raises(SystemExit) as e:
            parse_config(Floats, argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_from_dict_refuses_a_non_mapping():
    with pytest.raises(ConfigError, match="saved.json: expected a mapping of config keys, got list"):
        from_dict(Floats, [1, 2], where="saved.json")


def test_torch_free_config_names_match_the_registries():
    from echosynth.gen.diffusion.process import BETA_SCHEDULES
    from echosynth.gen.diffusion.process import SCHEDULES as DIFFUSION_SCHEDULES
    from echosynth.gen.diffusion.settings import SAMPLERS, SCHEDULES

    assert set(SCHEDULES) == set(BETA_SCHEDULES) == set(DIFFUSION_SCHEDULES)
    assert SAMPLERS == ("ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "unipc")  # the branches of echosynth.gen.diffusion.process.make_noise_scheduler
    from echosynth.gen.diffusion.process import Diffusion, make_noise_scheduler

    for sampler in SAMPLERS:
        make_noise_scheduler(Diffusion(1000, "linear", True), sampler)


DRY_RUN = {"gen/train.py": ["--data", "x.csv"], "gen/sample.py": ["--run", "r", "--out", "o", "--per_class", "1"],
           "gen/export.py": ["r", "--out", "o"]}


@pytest.mark.parametrize("script", list(DRY_RUN))
def test_scripts_parse_without_importing_torch_and_survive_a_closed_pipe(script):
    import subprocess
    import sys

    from conftest import REPO

    code = (f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
            f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().endswith("NO-TORCH"), proc.stderr
    # `--help | head -1`, `--dry-run | head`: the reader closes the pipe early; no BrokenPipeError traceback
    # (--help is longer than the pipe's buffer, the dry run's few lines only meet the pipe at exit)
    for args in (["--help"], [*DRY_RUN[script], "--dry-run"]):
        p = subprocess.Popen([sys.executable, script, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             bufsize=0)
        p.stdout.close()  # before the script writes (it takes a while to start): its first write meets a closed pipe
        err = p.stderr.read().decode()
        p.wait(timeout=120)
        assert "BrokenPipeError" not in err and "Traceback" not in err, (args, err)
