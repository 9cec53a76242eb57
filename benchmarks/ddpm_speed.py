"""Benchmark the diffusion UNet: FLOPs per forward, training images/s, sampling images/s, share of bf16 peak.

  python benchmarks/ddpm_speed.py                                   # CPU: tiny, writes ddpm_speed_cpu.json
  python benchmarks/ddpm_speed.py --preset thesis --batch 128 --sample_batch 512 \\
      --out benchmarks/results/ddpm_speed_h100.json                  # one GPU: bf16 + compile + dpm++2m-sde

Precision (`auto`: bf16 where native), compile (`auto`: on CUDA) and the sampler (default dpm++2m-sde,
`--sample_evals` model evaluations per image, the thesis study's setting) are what the study uses.
The share of peak is against the device's dense bf16 TFLOP/s (`--peak_tflops`, or looked up for
known GPUs). FLOPs are counted with torch.utils.flop_counter (2 per multiply-add) on the meta
device, so even the thesis preset is counted on a CPU. Training costs ~3 forwards per image.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from echosynth.gen.core.checkpoint import count_parameters
from echosynth.gen.core.config import field, parse_config, to_dict
from echosynth.gen.core.hardware import Compiled, autocast, resolve_for
from echosynth.gen.core.io import write_json
from echosynth.gen.core.rundir import package_versions
from echosynth.gen.diffusion.process import Diffusion
from echosynth.gen.diffusion.settings import COMPILE_CHOICES, PRECISIONS, SAMPLERS
from echosynth.gen.diffusion.synthesis import sample_images
from echosynth.gen.diffusion.trained import LoadedRun
from echosynth.gen.diffusion.unet import PRESETS, ClassUNet


@dataclass
class BenchConfig:
    preset: str = field("tiny", help="UNet preset to time", choices=tuple(PRESETS))
    image_size: int = field(0, help="image side (0 = the preset's)", min=0)
    batch: int = field(16, help="training batch", min=1)
    train_steps: int = field(10, help="timed training steps", min=1)
    sample_batch: int = field(16, help="sampling batch", min=1)
    sample_steps: int = field(10, help="timed sampling steps (rates are reported per chain of --sample_evals)", min=1)
    sample_evals: int = field(20, help="model evaluations per sampled image (the sampler's steps)", min=1)
    sampler: str = field("dpm++2m-sde", help="sampler", choices=SAMPLERS)
    warmup: int = field(3, help="untimed warm-up iterations (compilation happens here)", min=0)
    precision: str = field("auto", help="autocast: auto = bf16 where native", choices=PRECISIONS)
    compile: bool | str = field("auto", help="torch.compile the UNet (auto: on CUDA)", choices=COMPILE_CHOICES)
    channels_last: bool = field(True, help="channels_last on CUDA")
    threads: int = field(0, help="CPU threads (0 = torch default)", min=0)
    peak_tflops: float = field(0.0, help="device peak (bf16 dense) TFLOP/s for the share reached; 0 = look up known GPUs", min=0.0)
    flops_presets: list[str] = field(default_factory=lambda: list(PRESETS), help="presets whose FLOPs per forward are counted")
    out: str = field("", help="output JSON (default benchmarks/results/ddpm_speed_<cpu|cuda>.json)")


def flops_per_forward(preset: str, image_size: int, num_classes: int = 4) -> int:
    """FLOPs of one forward of one image (σ learned), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        m = ClassUNet(preset, image_size, num_classes, True)
        x, t, y = torch.zeros(1, 1, image_size, image_size), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as fc:
        m(x, t, y)
    return int(fc.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # dense, vendor data sheets


def bf16_peak(device: torch.device) -> float:
    """Dense bf16 TFLOP/s of a known GPU (first name fragment that matches), 0 if unknown or CPU."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if all(part in name for part in k.split())), 0.0)


def time_training(model, diffusion, cfg: BenchConfig, S: int, device: torch.device) -> tuple[float, float]:
    """(median, fastest) seconds per training step (forward, hybrid loss, backward, AdamW) at cfg.batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fwd = Compiled(model, log=print) if cfg.use_compile else model
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(cfg.batch, 1, S, S, generator=g) * 2 - 1).to(device)
    y = torch.randint(0, 4, (cfg.batch,), generator=g).to(device)
    times = []
    for i in range(cfg.warmup + cfg.train_steps):
        t = torch.randint(0, diffusion.num_timesteps, (cfg.batch,), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        _sync(device)
        t0 = time.perf_counter()
        xt = diffusion.q_sample(x0, t, noise)
        if cfg.channels_last and device.type == "cuda":
            xt = xt.contiguous(memory_format=torch.channels_last)
        with autocast(device, cfg.mp):
            out = fwd(xt, t, y)
        loss = diffusion.losses(out.float(), x0, noise, t)["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= cfg.warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def time_sampling(model, diffusion, cfg: BenchConfig, S: int, device: torch.device) -> tuple[float, float, float]:
    """(s per sampling step of cfg.sample_batch images incl. scheduler, median and fastest s per bare UNet forward)."""
    model.eval()
    run = LoadedRun(Compiled(model, log=print) if cfg.use_compile else model, diffusion,
                    ["A2C", "A4C", "PLAX", "PSAX"], S, None, 0, Path("."), "ema")
    labels, seeds = np.arange(cfg.sample_batch) % 4, np.arange(cfg.sample_batch)
    kw = dict(sampler=cfg.sampler, batch_size=cfg.sample_batch, device=device, precision=cfg.mp)
    sample_images(run, labels, seeds, steps=max(cfg.warmup, 1), **kw)
    _sync(device)
    t0 = time.perf_counter()
    sample_images(run, labels, seeds, steps=cfg.sample_steps, **kw)
    _sync(device)
    per_step = (time.perf_counter() - t0) / cfg.sample_steps
    x = torch.randn(cfg.sample_batch, 1, S, S, device=device)
    tt, yy = torch.full((cfg.sample_batch,), 500, device=device), torch.as_tensor(labels, device=device)
    times = []
    with torch.no_grad():
        for i in range(cfg.warmup + cfg.sample_steps):
            _sync(device)
            t0 = time.perf_counter()
            with autocast(device, cfg.mp):
                run.model(x, tt, yy)
            _sync(device)
            if i >= cfg.warmup:
                times.append(time.perf_counter() - t0)
    return per_step, float(np.median(times)), float(np.min(times))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(BenchConfig, argv, description=__doc__)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    S = cfg.image_size or PRESETS[cfg.preset].image_size
    cfg.mp, mp_from = resolve_for(cfg.precision, device)
    cfg.use_compile = cfg.compile is True or cfg.compile == "true" or (cfg.compile == "auto" and device.type == "cuda")
    peak = cfg.peak_tflops or bf16_peak(device)
    flops = {name: flops_per_forward(name, PRESETS[name].image_size) for name in cfg.flops_presets}
    flops_here = flops_per_forward(cfg.preset, S)
    torch.manual_seed(0)
    model = ClassUNet(cfg.preset, S, 4, True).to(device)
    if cfg.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    diffusion = Diffusion(1000, "linear", True)
    print(f"{cfg.preset} at {S}×{S}: {count_parameters(model) / 1e6:.2f} M params, {flops_here / 1e9:.2f} GFLOP/forward; "
          f"device {device}, precision {cfg.mp} ({mp_from}), compile {cfg.use_compile}, sampler {cfg.sampler} × {cfg.sample_evals}")
    t_train, t_train_min = time_training(model, diffusion, cfg, S, device)
    t_step, t_fwd, t_fwd_min = time_sampling(model, diffusion, cfg, S, device)
    train_tflops = 3 * flops_here * cfg.batch / t_train / 1e12
    fwd_tflops = flops_here * cfg.sample_batch / t_fwd / 1e12
    sample_ips = cfg.sample_batch / (t_step * cfg.sample_evals)
    res = {
        "train_s_per_step": t_train, "train_images_per_s": cfg.batch / t_train, "train_tflops": train_tflops,
        "train_s_per_step_fastest": t_train_min, "train_images_per_s_fastest": cfg.batch / t_train_min,
        "sample_s_per_step": t_step, "unet_forward_s": t_fwd, "unet_forward_s_fastest": t_fwd_min, "sample_images_per_s": sample_ips,
        "sample_evals_per_image": cfg.sample_evals,
        "unet_forward_tflops": fwd_tflops,
        "hours_for_32000_images": 32000 / sample_ips / 3600,
    }
    if peak:
        res["bf16_peak_tflops"] = peak
        res["unet_forward_share_of_bf16_peak"] = fwd_tflops / peak
        res["train_share_of_bf16_peak"] = train_tflops / peak
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "config": to_dict(cfg),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu: {platform.processor() or platform.machine()}",
        "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0], "precision": cfg.mp, "precision_from": mp_from,
        "compile": cfg.use_compile, "sampler": cfg.sampler,
        "versions": {k: v for k, v in package_versions().items() if k in ("torch", "diffusers", "accelerate", "numpy")},
        "preset": cfg.preset, "image_size": S, "params": count_parameters(model),
        "gflops_per_forward": {k: v / 1e9 for k, v in flops.items()} | {f"{cfg.preset}@{S}": flops_here / 1e9},
        "results": res,
    }
    out = Path(cfg.out or f"benchmarks/results/ddpm_speed_{device.type}.json")
    write_json(out, record)
    for k, v in res.items():
        print(f"  {k}: {v:.4g}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
