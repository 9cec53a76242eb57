"""One name per concept (issue 24): renamed config keys are still accepted, from a file or a flag, with a
one-line deprecation warning naming the new key (gen.core.config: `field(was=...)`); saved configs of
runs made before the rename load without a warning; retired study keys are refused with what to write."""

from __future__ import annotations

import pytest

from echosynth.evaluate.fidelity import FidelityConfig
from echosynth.evaluate.privacy import PrivacyConfig
from echosynth.gen.core.config import (
    ConfigError,
    apply_overrides,
    build,
    from_dict,
    parse_config,
    to_dict,
)
from echosynth.gen.diffusion.settings import SampleConfig, TrainConfig
from echosynth.pipelines.config import StudyConfig

SAMPLE = ["--run", "r", "--out", "o", "--per_class", "1"]


def test_old_flags_set_the_new_keys_with_one_warning(capsys):
    cfg = parse_config(SampleConfig, [*SAMPLE, "--steps", "7", "--checkpoint", "model"])
    assert (cfg.sampling_steps, cfg.weights) == (7, "model")
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: config key 'steps' is now 'sampling_steps' (the command line); the old name will go",
                   "warning: config key 'checkpoint' is now 'weights' (the command line); the old name will go"]
    assert parse_config(TrainConfig, ["--data", "d.csv", "--sample_steps", "3"]).sampling_steps == 3
    assert apply_overrides(FidelityConfig(), {"checkpoint_weights": "model"}, "t").weights == "model"
    assert apply_overrides(PrivacyConfig(), {"mia_weights": "model"}, "t").weights == "model"


def test_old_keys_in_a_file_and_in_a_nested_section(tmp_path, capsys):
    (tmp_path / "t.yaml").write_text("data: d.csv\nsample_steps: 5\n")
    assert parse_config(TrainConfig, ["--config", str(tmp_path / "t.yaml")]).sampling_steps == 5
    assert "'sample_steps' is now 'sampling_steps'" in capsys.readouterr().err
    cfg = parse_config(StudyConfig, ["--ddpm.sample.steps", "9", "--ddpm.train.sample_steps", "4"])
    assert (cfg.ddpm.sample.sampling_steps, cfg.ddpm.train.sampling_steps) == (9, 4)  # the preset stays under it
    assert cfg.ddpm.train.warmup_steps == 10


def test_a_saved_config_with_old_names_loads_quietly(capsys):
    saved = to_dict(TrainConfig(data="d.csv"))
    saved["sample_steps"] = saved.pop("sampling_steps")  # config.json of a run trained before the rename
    assert from_dict(TrainConfig, saved).sampling_steps == 50
    assert capsys.readouterr().err == ""


def test_new_and_old_names_are_one_key():
    with pytest.raises(ConfigError, match="unknown config key 'sampling_stepz'.*Did you mean sampling_steps"):
        build(SampleConfig, overrides={"sampling_stepz": 3})
