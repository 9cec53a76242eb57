"""Check every stage's settings before any stage runs: each stage's resolved config goes through its
CLI's own checks (ranges, choices and the config's `validate()`), in this process, plus the checks
that span two stages (a sampler's step count against the DDPM it samples from).

Typos and wrong types in a study section are refused when the study loads (the sections are the
stages' config dataclasses); what only the resolved config shows (a classifier architecture too big
for the image size, a sample stage without a DDPM long enough) is refused here, in a second,
naming the stage and the study section, instead of an hour into the study.
"""

from __future__ import annotations

from echosynth.gen.core.config import ConfigError, check
from echosynth.gen.diffusion.settings import MULTISTEP_SAMPLERS
from echosynth.pipelines.stages import Stage


class StageConfigError(ValueError):
    """One or more stages would refuse their settings; the message names each stage and key."""


def _sampling_steps(stage: Stage) -> int:
    """The sampling chain a stage runs from its DDPM (0: none)."""
    if stage.section == "ddpm.sample":
        return stage.settings.sampling_steps
    if stage.section == "evaluate.fidelity" and stage.settings.run:  # the FID-vs-checkpoint curve samples
        return stage.settings.sampling_steps
    return 0


def _too_long(stage: Stage, by_name: dict[str, Stage]) -> str:
    """A message when the stage samples more steps than its DDPM's diffusion allows ('' when fine)."""
    steps = _sampling_steps(stage)
    multistep = (getattr(stage.settings, "sampler", "") in MULTISTEP_SAMPLERS
                 and getattr(stage.settings, "spacing", "") != "trailing")
    for d in stage.deps if steps else []:
        up = by_name[d]
        T = up.settings.diffusion.num_timesteps if up.section == "ddpm.train" else 0
        if T and steps > T:
            return (f"{steps} sampling steps exceed diffusion.num_timesteps {T} "
                    f"of the DDPM it samples ({d}); lower the study's {stage.section}.sampling_steps")
        if T and multistep and steps >= T:
            return (f"{steps} sampling steps of {stage.settings.sampler} with {stage.settings.spacing} spacing repeat a "
                    f"timestep of the DDPM it samples ({d}, diffusion.num_timesteps {T}); lower the study's "
                    f"{stage.section}.sampling_steps to at most {T - 1}, or set {stage.section}.spacing: trailing")
    return ""


def check_stages(stages: list[Stage]) -> int:
    """Check every stage's resolved settings; raise StageConfigError listing all refusals (grouped by
    message). Returns the number of stage configs checked."""
    problems: dict[str, list[str]] = {}  # message -> stage names
    by_name = {s.name: s for s in stages}
    checked = 0
    for s in stages:
        if s.settings is None:
            continue
        checked += 1
        try:
            check(s.settings)
            msg = _too_long(s, by_name)
        except ConfigError as e:
            msg = str(e)
        if msg:
            problems.setdefault(f"{s.section}: {msg}", []).append(s.name)
    if problems:
        lines = []
        for msg, names in problems.items():
            who = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"stage {who}: {msg}")
        raise StageConfigError("\n".join(lines))
    return checked

