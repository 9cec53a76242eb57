"""The class-conditioned UNet (diffusers `UNet2DModel`), its preset registry, and loading a trained run."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gen.config import ConfigError
from gen.presets import PRESETS, ModelConfig, Preset, preset_image_size  # noqa: F401

# Presets and ModelConfig live in gen.presets (torch-free, for fast --help); re-exported here.


class ClassUNet(nn.Module):
    """`model(x_t, t, class_labels) -> (N, C_out, H, W)`; label `num_classes` is the null (unconditional) class."""

    def __init__(self, preset: str, image_size: int, num_classes: int, learn_sigma: bool, dropout: float = 0.0,
                 in_channels: int = 1) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        if preset not in PRESETS:
            raise ConfigError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
        down_factor = 2 ** (len(p.channels) - 1)
        if image_size % down_factor:
            raise ConfigError(f"model.image_size {image_size} must be divisible by {down_factor} for preset {preset!r}")
        if num_classes < 1:
            raise ConfigError("the model needs at least one class")
        self.num_classes, self.learn_sigma, self.image_size = num_classes, learn_sigma, image_size
        self.in_channels = in_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=in_channels, out_channels=self.out_channels,
            block_out_channels=p.channels, layers_per_block=p.layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in p.attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(p.attention)),
            attention_head_dim=p.attention_head_dim, norm_num_groups=p.norm_num_groups, dropout=dropout,
            resnet_time_scale_shift="scale_shift" if p.scale_shift else "default",
            num_class_embeds=num_classes + 1,
        )

    @property
    def null_class(self) -> int:
        """Label of the unconditional class used for classifier-free guidance."""
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """Predicted ε (and variance interpolation v when σ is learned) for noisy images x at timesteps t."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.unet(x, t, class_labels=class_labels).sample


def build_model(cfg: ModelConfig, num_classes: int, learn_sigma: bool) -> ClassUNet:
    """A fresh UNet from a model config."""
    return ClassUNet(cfg.preset, preset_image_size(cfg), num_classes, learn_sigma, dropout=cfg.dropout)


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def preset_table(num_classes: int = 4) -> str:
    """One line per preset with its parameter count (σ learned, 4 classes), for --help and the README."""
    lines = []
    for name, p in PRESETS.items():
        with torch.device("meta"):
            n = count_params(ClassUNet(name, p.image_size, num_classes, True))
        lines.append(f"  {name:7s} {n / 1e6:6.1f} M params  {p.image_size}×{p.image_size}  channels {p.channels}, "
                     f"{p.layers_per_block} res blocks/level, {p.note}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Loading a trained run

_STEP_RE = re.compile(r"^step-(\d{7})$")


def list_checkpoints(run_dir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints kept in RUN/checkpoints/ (ascending)."""
    ck = Path(run_dir) / "checkpoints"
    if not ck.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ck.iterdir()
                  if (m := _STEP_RE.match(p.name)) and (p / "state.json").is_file())


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """RUN/checkpoints/step-<NNNNNNN>."""
    return Path(run_dir) / "checkpoints" / f"step-{step:07d}"


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


def load_run(run_dir: str | os.PathLike, checkpoint: str = "ema", step: int | None = None,
             device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of a run from config.json + classes.json and load `ema` or `model` weights at `step`.

    `step` None takes the newest checkpoint whose weights file is intact, warning about (and naming)
    each newer broken one; weights holding nan or inf are refused.
    """
    from gen.checkpoint import check_finite, latest_intact, load_tensors
    from gen.diffusion import Diffusion
    from gen.io import read_json
    from gen.training import TrainConfig

    run_dir = Path(run_dir)
    if checkpoint not in ("ema", "model"):
        raise ValueError(f"checkpoint must be 'ema' or 'model', got {checkpoint!r}")
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a diffusion run (no config.json)")
    steps = list_checkpoints(run_dir)
    if not steps:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint under checkpoints/ yet")
    if step is None:
        step = latest_intact(run_dir, (f"{checkpoint}.safetensors", "state.json"))
        if step is None:
            raise FileNotFoundError(f"{run_dir}: every checkpoint's {checkpoint}.safetensors is damaged (see the warnings above)")
    elif step not in steps:
        raise FileNotFoundError(f"{run_dir}: no checkpoint at step {step}; kept steps: {steps}")
    from gen.config import from_dict

    cfg = from_dict(TrainConfig, read_json(run_dir / "config.json"), where=str(run_dir / "config.json"))
    classes = read_json(run_dir / "classes.json")
    model = build_model(cfg.model, len(classes), cfg.diffusion.learn_sigma)
    path = checkpoint_dir(run_dir, step) / f"{checkpoint}.safetensors"
    weights = load_tensors(path)
    check_finite(weights, str(path))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config's model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.to(device).eval().requires_grad_(False)
    d = cfg.diffusion
    diffusion = Diffusion(d.num_timesteps, d.schedule, d.learn_sigma, d.lambda_vlb)
    return LoadedRun(model, diffusion, list(classes), preset_image_size(cfg.model), cfg, step, run_dir, checkpoint)
