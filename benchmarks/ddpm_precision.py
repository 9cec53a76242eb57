"""DDPM training and sampling img/s per precision (fp32, bf16 autocast) and compile setting, as ratios to fp32 eager.

  python benchmarks/ddpm_precision.py                              # tiny @ 32 px and small @ 64 px, ~15 min on 2 cores
  python benchmarks/ddpm_precision.py --sizes tiny:32 --rounds 5

Training = q_sample, UNet forward (under the arm's autocast), hybrid loss in fp32, backward, AdamW; sampling =
one no-grad UNet forward of the batch (what every sampler step costs). The arms run interleaved in
`--rounds` rounds on the same machine, and the ratios are medians over rounds of each arm's median
against fp32 eager of the same round, so a shared machine's load touches every arm alike. Compile time
(the first call, minus an eager call) is recorded per arm. The JSON names the CPU, its bf16 flags and the
load average. Writes benchmarks/results/ddpm_precision.json.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from echosynth.gen.core.config import field, parse_config, to_dict
from echosynth.gen.core.hardware import Compiled, autocast
from echosynth.gen.core.io import write_json
from echosynth.gen.core.launcher import NATIVE_BF16_FLAGS, cpu_flags
from echosynth.gen.core.rundir import cpu_name, package_versions
from echosynth.gen.diffusion.process import Diffusion
from echosynth.gen.diffusion.unet import ClassUNet

ARMS = [("no", False), ("bf16", False), ("no", True), ("bf16", True)]  # (precision, compile)


@dataclass
class PrecisionBenchConfig:
    sizes: list[str] = field(default_factory=lambda: ["tiny:32", "small:64"], help="PRESET:IMAGE_SIZE pairs")
    batch: int = field(16, help="images per training step and per sampling forward", min=1)
    steps: int = field(4, help="timed iterations per arm and round", min=1)
    rounds: int = field(3, help="interleaved rounds", min=1)
    compile: bool = field(True, help="include the compiled arms")
    threads: int = field(0, help="torch threads (0 = torch's default)", min=0)
    out: str = field("benchmarks/results/ddpm_precision.json", help="output JSON")


def _arm_name(precision: str, compiled: bool) -> str:
    return ("bf16" if precision == "bf16" else "fp32") + ("+compile" if compiled else "")


class Arm:
    """One (precision, compile) setting over one UNet: a train step and a sampling forward, timed."""

    def __init__(self, preset: str, size: int, precision: str, compiled: bool, batch: int, log=None) -> None:
        torch.manual_seed(0)
        self.model = ClassUNet(preset, size, 4, True)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.precision, self.compiled = precision, compiled
        self.train_fn = Compiled(self.model, log) if compiled else self.model
        self.eval_model = ClassUNet(preset, size, 4, True).eval()
        self.eval_model.load_state_dict(self.model.state_dict())
        self.sample_fn = Compiled(self.eval_model, log) if compiled else self.eval_model
        self.diffusion = Diffusion(1000, "linear", True)
        g = torch.Generator().manual_seed(0)
        self.x0 = torch.rand(batch, 1, size, size, generator=g) * 2 - 1
        self.y = torch.arange(batch) % 4
        self.t = torch.randint(0, 1000, (batch,), generator=g)
        self.noise = torch.randn(self.x0.shape, generator=g)

    def train_step(self) -> float:
        t0 = time.perf_counter()
        x_t = self.diffusion.q_sample(self.x0, self.t, self.noise)
        with autocast("cpu", self.precision):
            out = self.train_fn(x_t, self.t, self.y)
        loss = self.diffusion.losses(out.float(), self.x0, self.noise, self.t)["loss"].mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    @torch.no_grad()
    def sample_forward(self) -> float:
        t0 = time.perf_counter()
        with autocast("cpu", self.precision):
            self.sample_fn(self.x0, self.t, self.y).float()
        return time.perf_counter() - t0


def bench_size(preset: str, size: int, cfg: PrecisionBenchConfig) -> dict:
    """Warm every arm up (timing the first call: compiling), then interleaved rounds; per-arm img/s and ratios."""
    arms = {_arm_name(p, c): Arm(preset, size, p, c, cfg.batch) for p, c in ARMS if cfg.compile or not c}
    first: dict[str, dict[str, float]] = {}
    for name, arm in arms.items():
        first[name] = {"train_first_call_s": arm.train_step(), "sample_first_call_s": arm.sample_forward()}
        print(f"  {preset}@{size} {name}: first calls train {first[name]['train_first_call_s']:.1f} s, "
              f"sample {first[name]['sample_first_call_s']:.1f} s", flush=True)
    per_round: dict[str, dict[str, list[float]]] = {n: {"train": [], "sample": []} for n in arms}
    for r in range(cfg.rounds):
        for name, arm in arms.items():
            per_round[name]["train"].append(float(np.median([arm.train_step() for _ in range(cfg.steps)])))
            per_round[name]["sample"].append(float(np.median([arm.sample_forward() for _ in range(cfg.steps)])))
        print(f"  {preset}@{size} round {r + 1}: " + ", ".join(
            f"{n} train {cfg.batch / v['train'][-1]:.0f} / sample {cfg.batch / v['sample'][-1]:.0f} img/s"
            for n, v in per_round.items()), flush=True)
    base = per_round["fp32"]
    out = {}
    for name, v in per_round.items():
        eager_train = float(np.median(base["train"]))
        eager_sample = float(np.median(base["sample"]))
        out[name] = {
            "train_images_per_s": cfg.batch / float(np.median(v["train"])),
            "sample_forward_images_per_s": cfg.batch / float(np.median(v["sample"])),
            "train_ratio_vs_fp32": float(np.median([b / a for a, b in zip(v["train"], base["train"])])),
            "sample_ratio_vs_fp32": float(np.median([b / a for a, b in zip(v["sample"], base["sample"])])),
            "train_compile_overhead_s": max(first[name]["train_first_call_s"] - eager_train, 0.0) if "compile" in name else 0.0,
            "sample_compile_overhead_s": max(first[name]["sample_first_call_s"] - eager_sample, 0.0) if "compile" in name else 0.0,
            "per_round_s": v,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PrecisionBenchConfig, argv, description=__doc__)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    flags = cpu_flags()
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "config": to_dict(cfg),
        "device": f"cpu: {cpu_name()}, {os.cpu_count()} cores", "threads": torch.get_num_threads(),
        "cpu_bf16_flags": sorted(f for f in flags if f in (*NATIVE_BF16_FLAGS, "amx_tile", "amx_int8", "avx512f")),
        "load_average_1min_start": os.getloadavg()[0],
        "versions": {k: v for k, v in package_versions().items() if k in ("torch", "diffusers", "numpy")},
        "results": {},
    }
    for spec in cfg.sizes:
        preset, _, size = spec.partition(":")
        print(f"{preset} at {size} px, batch {cfg.batch}, {torch.get_num_threads()} threads", flush=True)
        record["results"][spec] = bench_size(preset, int(size), cfg)
        record["load_average_1min_end"] = os.getloadavg()[0]
        write_json(cfg.out, record)
    for spec, arms in record["results"].items():
        for name, r in arms.items():
            print(f"{spec:9s} {name:14s} train {r['train_images_per_s']:7.1f} img/s ({r['train_ratio_vs_fp32']:.2f}×)  "
                  f"sample forward {r['sample_forward_images_per_s']:7.1f} img/s ({r['sample_ratio_vs_fp32']:.2f}×)  "
                  f"compile {r['train_compile_overhead_s']:.0f} + {r['sample_compile_overhead_s']:.0f} s")
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
