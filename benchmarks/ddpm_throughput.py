"""How close echosynth's training and sampling loops come to the least a user would write by hand.

  python benchmarks/ddpm_throughput.py                      # tiny UNet, 32 px, batch 16, 1 thread
  python benchmarks/ddpm_throughput.py --threads 2 --rounds 5

Training: `echosynth.gen.diffusion.loop.train` (data loader, per-sample seeded draws, hybrid loss, EMA, gradient
clipping, logging) against a bare loop over the same UNet, batch and threads: UNet forward, MSE,
backward, AdamW. Sampling: `echosynth.gen.diffusion.synthesis.sample_images` (per-image seeded noise, learned
variances) against a bare diffusers `DDPMScheduler` loop over the same model and steps. The arms
run interleaved, `--rounds` times each, and the ratios are of the medians, so a shared machine's
load affects both sides alike. Writes benchmarks/results/ddpm_throughput.json.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from echosynth.gen.core.config import field, parse_config, to_dict
from echosynth.gen.core.io import read_jsonl, write_json
from echosynth.gen.core.rundir import cpu_name, package_versions
from echosynth.gen.data.build import build_phantom
from echosynth.gen.data.dataset import ManifestDataset
from echosynth.gen.diffusion.loop import TrainConfig, train
from echosynth.gen.diffusion.process import Diffusion
from echosynth.gen.diffusion.synthesis import sample_images
from echosynth.gen.diffusion.trained import LoadedRun
from echosynth.gen.diffusion.unet import PRESETS, ClassUNet, ModelConfig


@dataclass
class ThroughputConfig:
    preset: str = field("tiny", help="UNet preset", choices=tuple(PRESETS))
    image_size: int = field(32, help="image side in pixels", min=8)
    batch: int = field(16, help="training batch (global, one process)", min=1)
    train_steps: int = field(40, help="timed training steps per round and arm", min=10)
    sample_n: int = field(32, help="images per sampling round", min=1)
    sample_steps: int = field(25, help="sampling steps", min=1)
    rounds: int = field(3, help="interleaved repetitions of every arm", min=1)
    threads: int = field(1, help="torch CPU threads for both arms", min=1)
    out: str = field("benchmarks/results/ddpm_throughput.json", help="output JSON")


def bare_training(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int, steps: int,
                  lr: float, num_timesteps: int) -> float:
    """Images/s of the minimal hand-written loop: forward, MSE on ε, backward, AdamW (after 3 warm-up steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ac = torch.as_tensor(Diffusion(num_timesteps).alphas_cumprod, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    C = model.in_channels
    t0 = 0.0
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x0, y = images[idx], labels[idx]
        t = torch.randint(0, num_timesteps, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        out = model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y)
        loss = torch.nn.functional.mse_loss(out[:, :C], noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return batch * steps / (time.perf_counter() - t0)


def echosynth_training(manifest: Path, root: Path, cfg: ThroughputConfig, round_: int) -> float:
    """Images/s of echosynth.gen.diffusion.loop.train over its logged intervals after the first (warm-up) one."""
    log_every = 10
    tc = TrainConfig(data=str(manifest), run_dir=str(root / f"run-{round_}"), steps=cfg.train_steps + log_every,
                     global_batch=cfg.batch, lr=1e-3, ema_decay=0.995, log_every=log_every, sample_per_class=0,
                     checkpoint_every=10 ** 6, model=ModelConfig(preset=cfg.preset, image_size=cfg.image_size))
    run = train(tc)
    recs = read_jsonl(run / "stats.jsonl")[1:]  # the first interval holds start-up
    return float(np.mean([r["images_per_s"] for r in recs]))


def bare_sampling(model: torch.nn.Module, diffusion: Diffusion, labels: np.ndarray, steps: int, size: int) -> float:
    """Images/s of a bare diffusers DDPMScheduler loop (one generator for the batch)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=diffusion.num_timesteps, trained_betas=diffusion.betas.tolist(),
                          variance_type="learned_range", clip_sample=True, timestep_spacing="linspace")
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    y = torch.as_tensor(labels)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = torch.randn((len(labels), model.in_channels, size, size), generator=g)
        for t in sched.timesteps:
            x = sched.step(model(x, t.expand(len(labels)), y), t, x, generator=g).prev_sample
    return len(labels) / (time.perf_counter() - t0)


def echosynth_sampling(loaded: LoadedRun, labels: np.ndarray, steps: int) -> float:
    """Images/s of echosynth.gen.diffusion.synthesis.sample_images (per-image seeds) in one batch."""
    t0 = time.perf_counter()
    sample_images(loaded, labels, np.arange(len(labels)), steps=steps, batch_size=len(labels))
    return len(labels) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ThroughputConfig, argv, description=__doc__)
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)  # as both echosynth loops do on CPU
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_phantom(root / "phantom", n=64, size=cfg.image_size, seed=0, progress=False)
        manifest = root / "phantom" / "manifest.csv"
        ds = ManifestDataset(manifest, size=cfg.image_size, preload=True)
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        images, labels = torch.stack(xs), torch.as_tensor(ys)
        torch.manual_seed(0)
        model = ClassUNet(cfg.preset, cfg.image_size, len(ds.classes), True)
        diffusion = Diffusion(1000, "linear", True)
        loaded = LoadedRun(model.eval(), diffusion, ds.classes, cfg.image_size, TrainConfig(), 0, root, "ema")
        sample_labels = np.arange(cfg.sample_n) % len(ds.classes)
        arms: dict[str, list[float]] = {k: [] for k in ("bare_train", "echosynth_train", "bare_sample", "echosynth_sample")}
        for r in range(cfg.rounds):
            model.train()
            arms["bare_train"].append(bare_training(model, images, labels, cfg.batch, cfg.train_steps, 1e-3, 1000))
            arms["echosynth_train"].append(echosynth_training(manifest, root, cfg, r))
            model.eval()
            arms["bare_sample"].append(bare_sampling(model, diffusion, sample_labels, cfg.sample_steps, cfg.image_size))
            arms["echosynth_sample"].append(echosynth_sampling(loaded, sample_labels, cfg.sample_steps))
            print(f"round {r + 1}/{cfg.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in arms.items()), flush=True)
    med = {k: float(np.median(v)) for k, v in arms.items()}
    results = {"train_ratio": med["echosynth_train"] / med["bare_train"],
               "sample_ratio": med["echosynth_sample"] / med["bare_sample"],
               "median_images_per_s": med, "rounds": arms}
    write_json(cfg.out, {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "config": to_dict(cfg),
        "device": f"cpu: {cpu_name()}, {os.cpu_count()} cores",
        "load_average_1min": os.getloadavg()[0],
        "versions": {k: v for k, v in package_versions().items() if k in ("torch", "diffusers", "accelerate", "numpy")},
        "results": results})
    print(f"train ratio {results['train_ratio']:.3f}, sample ratio {results['sample_ratio']:.3f}; wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
