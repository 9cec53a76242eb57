"""Export a trained diffusion run to the diffusers format: UNet, scheduler config and a model card.

  python gen/export.py runs/00003-ddpm-thesis-train --out exports/ddpm-thesis
  python gen/export.py RUN --out DIR --weights model --step 20000

Writes DIR/{unet/ (UNet2DModel.save_pretrained), scheduler/ (DDPMScheduler with the run's β,
T and variance type), echosynth.json (classes, null class, source run), README.md (model card)}.
Load with `UNet2DModel.from_pretrained(DIR, subfolder="unet")` and
`DDPMScheduler.from_pretrained(DIR, subfolder="scheduler")`; label K (the number of classes) is
the unconditional class used for classifier-free guidance.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from echosynth.gen.core.config import ConfigError, parse_config
from echosynth.gen.core.config import field as cfg_field
from echosynth.gen.core.io import check_writable_output, temp_dir, write_json, write_text
from echosynth.gen.core.script import run_script, user_errors


@dataclass
class ExportConfig:
    """`gen/export.py`: which run and weights, and where the diffusers folder goes."""

    run: str = cfg_field("", help="diffusion run directory (from gen/train.py)")
    out: str = cfg_field("", help="output directory (diffusers layout)")
    weights: str = cfg_field("ema", help="weights to export: the EMA or the raw model", choices=("ema", "model"),
                             was=("checkpoint",))
    step: int = cfg_field(0, help="checkpoint step (0 = newest intact)", min=0)
    overwrite: bool = cfg_field(False, help="replace an existing output directory")

    def validate(self) -> None:
        if not self.run:
            raise ConfigError("give the run directory: gen/export.py RUN --out DIR")
        if not self.out:
            raise ConfigError("--out DIR is required")


def training_data(cfg) -> dict:
    """Manifest, split, subset and per-class image counts of a run's training data (counts None if it is gone)."""
    info = {"manifest": cfg.data, "split": cfg.split or "all", "subset": cfg.subset or "all", "class_counts": None}
    try:
        from echosynth.gen.data.manifest import read_manifest  # here: --help answers without pandas

        m = read_manifest(cfg.data).filter(split=cfg.split or None, subset=cfg.subset or None)
        info["class_counts"] = {str(k): int(v) for k, v in m.df["view"].value_counts().sort_index().items()}
    except Exception:  # the card still names the data; counts are a convenience
        pass
    return info


def model_card(meta: dict) -> str:
    """The README.md of an export: what the model is, its classes, its training data and how to sample."""
    classes = "\n".join(f"| {i} | {c} |" for i, c in enumerate(meta["classes"]))
    data = meta["training_data"]
    counts = ", ".join(f"{c}: {n}" for c, n in data["class_counts"].items()) if data["class_counts"] else "not available at export time"
    return f"""---
library_name: diffusers
tags: [diffusers, class-conditional, image-generation, echocardiography, echosynth]
---

# echosynth class-conditioned DDPM ({meta['image_size']}×{meta['image_size']}, grayscale)

An improved DDPM (Nichol & Dhariwal 2021: {meta['schedule']} β schedule, T = {meta['num_timesteps']},
{'learned variance (`learned_range`)' if meta['learn_sigma'] else 'fixed variance (`fixed_small`)'}) trained with echosynth,
exported from `{meta['run']}` at step {meta['step']} ({meta['weights']} weights).

## Classes

`class_labels` of the UNet:

| label | view |
|---|---|
{classes}
| {len(meta['classes'])} | (unconditional: classifier-free guidance's null class) |

## Training data

- manifest: `{data['manifest']}` (split {data['split']}, subset {data['subset']})
- images per class: {counts}
- {meta['train_steps']} optimiser steps, global batch {meta['global_batch']}, classifier-free label dropout {meta['cfg_dropout']}

Synthetic echocardiograms are for research on data augmentation and privacy; they are not
patient data and not for diagnosis.

## Sampling with diffusers

```python
import torch
from diffusers import DDPMScheduler, UNet2DModel

unet = UNet2DModel.from_pretrained("DIR", subfolder="unet").eval()
scheduler = DDPMScheduler.from_pretrained("DIR", subfolder="scheduler")
scheduler.set_timesteps(100)
labels = torch.tensor([0, 1])                       # one image per label
gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
x = torch.cat([torch.randn(1, 1, {meta['image_size']}, {meta['image_size']}, generator=g) for g in gens])
with torch.no_grad():
    for t in scheduler.timesteps:
        out = unet(x, t.expand(len(x)), class_labels=labels).sample
        x = scheduler.step(out, t, x, generator=gens).prev_sample
images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
```

With a per-image generator seeded as echosynth seeds image i (`echosynth.gen.diffusion.synthesis.image_seeds`),
this reproduces `gen/sample.py`'s images. The scheduler clips x̂₀ to [−1, 1]
(improved DDPM's `clip_denoised`), as echosynth does.
"""


def export(cfg: ExportConfig) -> Path:
    """Write the diffusers folder for cfg.run into cfg.out (assembled in a temporary directory, then renamed)."""
    # here, not at the top: --help and config errors answer without torch
    from echosynth.gen.diffusion.process import make_noise_scheduler
    from echosynth.gen.diffusion.trained import load_run

    out = check_writable_output(cfg.out, cfg.overwrite)
    loaded = load_run(cfg.run, cfg.weights, cfg.step or None)
    tc, d = loaded.config, loaded.diffusion
    meta = {"run": str(Path(cfg.run).resolve()), "step": loaded.step, "weights": cfg.weights,
            "classes": loaded.classes, "null_class": len(loaded.classes), "image_size": loaded.image_size,
            "num_timesteps": d.num_timesteps, "schedule": d.schedule, "learn_sigma": d.learn_sigma,
            "variance_type": "learned_range" if d.learn_sigma else "fixed_small", "cfg_dropout": tc.cfg_dropout,
            "train_steps": tc.steps, "global_batch": tc.global_batch, "training_data": training_data(tc)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, prefix=f".{out.name}.")
    try:
        loaded.model.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        make_noise_scheduler(d, "ddpm").save_pretrained(tmp / "scheduler")
        write_json(tmp / "echosynth.json", meta)
        write_text(tmp / "README.md", model_card(meta))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@user_errors("export.py", FileExistsError, FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    """Parse (without torch), then export."""
    cfg = parse_config(ExportConfig, argv, description=__doc__, positional=("run",))
    out = export(cfg)
    print(f"wrote {out}/unet, {out}/scheduler, {out}/README.md")
    return 0


if __name__ == "__main__":
    run_script(main)
