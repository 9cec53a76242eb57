"""UNet presets (name -> architecture) and the model config: no torch, so `--help` and config errors answer fast."""

from __future__ import annotations

from dataclasses import dataclass

from echosynth.gen.core.config import field as cfg_field

# ----------------------------------------------------------------------------------------------
# Presets: name -> UNet2DModel architecture. Attention levels are those whose flag is True.


@dataclass(frozen=True)
class Preset:
    """A UNet architecture: channels per level, res blocks per level, attention per level."""

    channels: tuple[int, ...]
    layers_per_block: int
    attention: tuple[bool, ...]
    image_size: int
    attention_head_dim: int = 64
    norm_num_groups: int = 32
    scale_shift: bool = True  # FiLM-style time embedding (improved-diffusion's use_scale_shift_norm)
    note: str = ""


PRESETS: dict[str, Preset] = {
    # CPU tests at 32×32: ~0.1 s per training step of 16 images on 2 cores.
    "tiny": Preset((32, 64, 64), 1, (False, False, True), 32, attention_head_dim=32, norm_num_groups=16,
                   note="CPU tests, 32×32"),
    # CPU demo at 32–64 px.
    "small": Preset((64, 128, 128, 256), 2, (False, False, True, True), 64, norm_num_groups=32,
                    note="CPU demo, 32–64 px"),
    # improved-diffusion's 64-px ImageNet model at 112×112: 128·(1,2,3,4), 3 res blocks,
    # attention at 28×28 and 14×14 (4× and 8× downsampled).
    "thesis": Preset((128, 256, 384, 512), 3, (False, False, True, True), 112,
                     note="thesis, 112×112 (GPU)"),
}


@dataclass
class ModelConfig:
    """Which UNet: a preset plus the few knobs that do not change its identity."""

    preset: str = cfg_field("tiny", help="UNet preset", choices=tuple(PRESETS))
    image_size: int = cfg_field(0, help="image side in pixels (0 = the preset's)", min=0, max=1024)
    dropout: float = cfg_field(0.0, help="dropout in the res blocks", min=0.0, max=0.9)


def preset_image_size(cfg: ModelConfig) -> int:
    """The config's image size, or its preset's when 0."""
    return cfg.image_size or PRESETS[cfg.preset].image_size


def preset_summary() -> str:
    """One line per preset without building it (for --help; echosynth.gen.diffusion.unet.preset_table adds parameter counts)."""
    lines = []
    for name, p in PRESETS.items():
        attn = ",".join(str(i) for i, a in enumerate(p.attention) if a) or "none"
        lines.append(f"  {name:7s} {p.image_size}×{p.image_size}  channels {p.channels}, {p.layers_per_block} res "
                     f"blocks/level, attention at levels {attn}, {p.note}")
    return "\n".join(lines)
