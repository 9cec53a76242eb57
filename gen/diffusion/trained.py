"""Loading a trained diffusion run: rebuild its UNet from config.json + classes.json and load a checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from echosynth.gen.core.checkpoint import (
    check_finite,
    checkpoint_dir,
    latest_intact,
    list_checkpoints,
    load_tensors,
)
from echosynth.gen.core.config import from_dict
from echosynth.gen.core.io import read_json
from echosynth.gen.diffusion.presets import preset_image_size
from echosynth.gen.diffusion.process import Diffusion
from echosynth.gen.diffusion.settings import TrainConfig
from echosynth.gen.diffusion.unet import ClassUNet, build_model


@dataclass
class LoadedRun:
    """A trained run ready for sampling or scoring."""

    model: ClassUNet
    diffusion: Any
    classes: list[str]
    image_size: int
    config: Any
    step: int
    run_dir: Path
    weights: str


def load_run(run_dir: str | os.PathLike, weights: str = "ema", step: int | None = None,
             device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of a run from config.json + classes.json and load `ema` or `model` weights at `step`.

    `step` None takes the newest checkpoint whose weights file is intact, warning about (and naming)
    each newer broken one; weights holding nan or inf are refused.
    """
    run_dir = Path(run_dir)
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a diffusion run (no config.json)")
    steps = list_checkpoints(run_dir)
    if not steps:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint under checkpoints/ yet")
    if step is None:
        step = latest_intact(run_dir, (f"{weights}.safetensors", "state.json"))
        if step is None:
            raise FileNotFoundError(f"{run_dir}: every checkpoint's {weights}.safetensors is damaged (see the warnings above)")
    elif step not in steps:
        raise FileNotFoundError(f"{run_dir}: no checkpoint at step {step}; kept steps: {steps}")
    cfg = from_dict(TrainConfig, read_json(run_dir / "config.json"), where=str(run_dir / "config.json"))
    classes = read_json(run_dir / "classes.json")
    model = build_model(cfg.model, len(classes), cfg.diffusion.learn_sigma)
    path = checkpoint_dir(run_dir, step) / f"{weights}.safetensors"
    tensors = load_tensors(path)
    check_finite(tensors, str(path))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config's model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.to(device).eval().requires_grad_(False)
    d = cfg.diffusion
    diffusion = Diffusion(d.num_timesteps, d.schedule, d.learn_sigma, d.lambda_vlb)
    return LoadedRun(model, diffusion, list(classes), preset_image_size(cfg.model), cfg, step, run_dir, weights)
