"""The class-conditioned UNet (diffusers `UNet2DModel`) and its preset registry.

The checkpoint layout lives in gen/core/checkpoint.py, loading a trained run in gen/diffusion/trained.py.
"""

from __future__ import annotations

import torch
from torch import nn

from echosynth.gen.core.checkpoint import count_parameters
from echosynth.gen.core.config import ConfigError
from echosynth.gen.diffusion.presets import PRESETS, ModelConfig, Preset, preset_image_size  # noqa: F401

# Presets and ModelConfig live in echosynth.gen.diffusion.presets (torch-free, for fast --help); re-exported here.


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


def preset_table(num_classes: int = 4) -> str:
    """One line per preset with its parameter count (σ learned, 4 classes), for --help and docs/ddpm.md."""
    lines = []
    for name, p in PRESETS.items():
        with torch.device("meta"):
            n = count_parameters(ClassUNet(name, p.image_size, num_classes, True))
        lines.append(f"  {name:7s} {n / 1e6:6.1f} M params  {p.image_size}×{p.image_size}  channels {p.channels}, "
                     f"{p.layers_per_block} res blocks/level, {p.note}")
    return "\n".join(lines)
