"""A small TorchScript stand-in for the FID Inception file, with the same signature, for tests and smoke runs.

The real network is slow on CPU (~0.3 s per image at 299 px on two cores). The stand-in takes the
same input (N×3×299×299 in [-1, 1)) and returns N×`dim` non-negative features from fixed random
convolutions and pooling, so every code path (loading by path, resizing, caching, metrics) runs
in milliseconds. Its numbers mean nothing as FID values.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


class _StandIn(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 5, stride=4, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != 299 or x.shape[3] != 299:
            raise ValueError("expected N×3×299×299 input")
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        h = nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)
        return torch.relu(self.fc(h))


def make_standin_inception(path: str | os.PathLike, dim: int = 64, seed: int = 0) -> Path:
    """Write a scripted stand-in network (N×3×299×299 → N×dim) to `path` and return it."""
    gen = torch.Generator().manual_seed(seed)
    net = _StandIn(dim)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / max(1, p[0].numel())) ** 0.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net.eval()), str(path))
    return path


def make_standin_classifier(run_dir: str | os.PathLike, classes: list[str], image_size: int,
                            arch: str = "madani", seed: int = 0) -> Path:
    """An untrained classifier in the layout `echosynth.classify.models.load_classifier` reads (RUN/seed-0/)."""
    from safetensors.torch import save_file

    from echosynth.classify.models import build_classifier, model_info
    from echosynth.gen.core.io import write_json

    torch.manual_seed(seed)
    model = build_classifier(arch, len(classes), image_size)
    seed_dir = Path(run_dir) / f"seed-{seed}"
    (seed_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_json(seed_dir / "model.json", model_info(arch, list(classes), image_size))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(seed_dir / "checkpoints" / "best.safetensors"))
    save_file(state, str(seed_dir / "checkpoints" / "last.safetensors"))
    return Path(run_dir)


def make_standin_diffusion_run(run_dir: str | os.PathLike, classes: list[str], steps: list[int] = (1, 2),
                               preset: str = "tiny", seed: int = 0) -> Path:
    """An untrained diffusion run (config.json, classes.json, checkpoints) that `echosynth.gen.diffusion.trained.load_run` loads."""
    from echosynth.gen.core.checkpoint import save_checkpoint
    from echosynth.gen.core.config import build, to_dict
    from echosynth.gen.core.io import write_json
    from echosynth.gen.diffusion.loop import TrainConfig
    from echosynth.gen.diffusion.unet import build_model

    run_dir = Path(run_dir)
    cfg = build(TrainConfig, overrides={"data": "standin.csv", "model.preset": preset, "run_dir": str(run_dir)})
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", to_dict(cfg))
    write_json(run_dir / "classes.json", list(classes))
    for k, step in enumerate(steps):
        torch.manual_seed(seed + k)
        sd = build_model(cfg.model, len(classes), cfg.diffusion.learn_sigma).state_dict()
        save_checkpoint(run_dir, step, model=sd, ema=sd, optimizer={"state": {}, "param_groups": []},
                        scheduler={}, state={})
    return run_dir
