"""Check every stage's settings before any stage runs: each command's arguments go through its
CLI's own config parser, in this process (no subprocess per stage), plus the checks that span two
stages (a sampler's step count against the DDPM it samples from).

A typo in `--ddpm.train_args` or an unknown `--classify.archs` entry is then refused in a second,
naming the stage and the study key, instead of an hour into the study.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from typing import Any

from echosynth.gen.core.config import parse_config
from echosynth.pipelines.stages import Stage

# script -> (module, config class, positional keys): the class each script passes to parse_config.
CLIS = {
    "gen/prepare.py": ("echosynth.gen.prepare", "PrepareConfig", ("command", "format")),
    "gen/train.py": ("echosynth.gen.diffusion.trainer", "TrainConfig", ()),
    "gen/sample.py": ("echosynth.gen.diffusion.synthesis", "SampleConfig", ()),
    "classify/train.py": ("echosynth.classify.trainer", "ClassifierTrainConfig", ()),
    "evaluate/fidelity.py": ("echosynth.evaluate.fidelity", "FidelityConfig", ()),
    "evaluate/privacy.py": ("echosynth.evaluate.privacy", "PrivacyConfig", ()),
    "evaluate/embed.py": ("echosynth.evaluate.embed", "EmbedConfig", ()),
    "reports/build.py": ("echosynth.reports.build", "ReportConfig", ("study",)),
}

# Where a stage's flag comes from in the study config, when it is not in a *_args list.
STUDY_KEYS = {
    "gen/train.py": {"steps": "ddpm.steps", "config": "ddpm.preset"},
    "gen/sample.py": {"steps": "ddpm.sample_steps", "per_class": "ddpm.per_class"},
    "classify/train.py": {"arch": "classify.archs", "seeds": "classify.seeds", "config": "classify.preset"},
    "evaluate/fidelity.py": {"features": "evaluate.fidelity_features", "sampling_steps": "ddpm.sample_steps"},
}


class StageConfigError(ValueError):
    """One or more stages would refuse their settings; the message names each stage and key."""


def split_command(command: list[Any]) -> tuple[str, list[str]] | None:
    """(script, its arguments) of a stage command (plain python or accelerate launch), else None."""
    cmd = [str(c) for c in command]
    for i, c in enumerate(cmd):
        if c in CLIS or any(c.endswith("/" + s) for s in CLIS):
            return next(s for s in CLIS if c == s or c.endswith("/" + s)), cmd[i + 1:]
    return None


def parse_stage(script: str, args: list[str]) -> tuple[Any, str | None]:
    """(config, None) when the script's parser accepts args, else (None, its error message)."""
    module, cls_name, positional = CLIS[script]
    cls = getattr(importlib.import_module(module), cls_name)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse_config(cls, args, positional=positional), None
    except SystemExit:
        text = err.getvalue().strip().splitlines()
        msg = text[-1] if text else "its config parser refused the arguments"
        msg = re.sub(r"^\S+: error: ", "", msg)
        return None, re.sub(r" Valid keys: .*", f" ({script} --help lists the keys)", msg)


def _study_key(script: str, msg: str, study: dict) -> str:
    """The study config key that set the refused value, as a hint ('' when unknown)."""
    m = re.match(r"unknown config key '([^']+)'", msg) or re.match(r"([\w.]+): ", msg)
    if not m:
        return ""
    key = m.group(1)
    for section, fields in study.items():
        if not isinstance(fields, dict):
            continue
        for name, value in fields.items():
            if name.endswith("_args") and isinstance(value, list) and any(
                    str(v).split("=", 1)[0].strip() == key for v in value):
                return f"{section}.{name}"
    return STUDY_KEYS.get(script, {}).get(key, "")


def check_stages(stages: list[Stage], study: dict | None = None) -> int:
    """Parse every stage's arguments with its CLI's parser; raise StageConfigError listing all
    refusals (grouped by message). Returns the number of commands checked."""
    study = study or {}
    parsed: dict[str, tuple[str, Any]] = {}
    problems: dict[str, list[str]] = {}  # message -> stage names
    for s in stages:
        found = split_command(s.command)
        if found is None:
            continue
        script, args = found
        cfg, err = parse_stage(script, args)
        if err:
            hint = _study_key(script, err, study)
            msg = f"{script}: {err}" + (f" (set by the study's {hint})" if hint else "")
            problems.setdefault(msg, []).append(s.name)
            continue
        parsed[s.name] = (script, cfg)
    by_name = {s.name: s for s in stages}
    for name, (script, cfg) in parsed.items():  # a chain of sampling steps longer than the DDPM's
        steps = getattr(cfg, "steps", None) if script == "gen/sample.py" else getattr(cfg, "sampling_steps", None)
        if script not in ("gen/sample.py", "evaluate/fidelity.py") or not steps:
            continue
        for d in by_name[name].deps:
            up = parsed.get(d)
            if up and up[0] == "gen/train.py" and steps > up[1].diffusion.num_timesteps:
                key = "ddpm.sample_steps"
                problems.setdefault(f"{script}: {steps} sampling steps exceed diffusion.num_timesteps "
                                    f"{up[1].diffusion.num_timesteps} of the DDPM it samples ({d}); lower the "
                                    f"study's {key}", []).append(name)
    if problems:
        lines = []
        for msg, names in problems.items():
            who = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"stage {who}: {msg}")
        raise StageConfigError("\n".join(lines))
    return len(parsed)
