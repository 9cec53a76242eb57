"""Classifier img/s in bf16 autocast against fp32: training (forward + backward + Adam) and prediction, interleaved.

    .venv/bin/python benchmarks/classify_precision.py                       # small_cnn and resnet18 at 32 px, batch 32
    .venv/bin/python benchmarks/classify_precision.py --archs small_cnn --rounds 2 --steps 1 --out /tmp/c.json

Arms fp32 and bf16 (echosynth.gen.core.hardware.autocast) of the same architecture run alternately (fp32, bf16, fp32, bf16 ...)
in `--rounds` rounds of `--steps` timed steps each, one torch thread by default; the ratio of a round is
fp32 time / bf16 time of that round, and the reported ratio is the median over rounds (every round is in
the JSON). The loss is computed on `.float()` logits, as classify/loop.py does. Random inputs: model
step only, no data loading. Records the CPU's bf16 flags, load average, torch version and date.
Writes benchmarks/results/classify_precision.json.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from echosynth.classify.models import MODELS, build_classifier
from echosynth.gen.core.config import field, parse_config, to_dict
from echosynth.gen.core.hardware import autocast
from echosynth.gen.core.io import write_json
from echosynth.gen.core.launcher import NATIVE_BF16_FLAGS, cpu_flags
from echosynth.gen.core.rundir import cpu_name, package_versions


@dataclasses.dataclass
class ClassifyPrecisionConfig:
    """benchmarks/classify_precision.py settings."""

    archs: list[str] = field(default_factory=lambda: ["small_cnn", "resnet18"], choices=tuple(MODELS),
                             help="architectures to time")
    image_size: int = field(32, min=32, help="input size")
    batch: int = field(32, min=2, help="images per step")
    steps: int = field(3, min=1, help="timed steps per arm and round (median taken)")
    rounds: int = field(7, min=1, help="interleaved rounds")
    threads: int = field(1, min=0, help="torch CPU threads (0: default)")
    out: str = field("benchmarks/results/classify_precision.json", help="JSON results file")


class Arm:
    """One architecture in one precision: a training step and a prediction forward, timed."""

    def __init__(self, arch: str, precision: str, cfg: ClassifyPrecisionConfig) -> None:
        torch.manual_seed(0)
        self.precision = precision
        self.model = build_classifier(arch, 4, cfg.image_size)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(cfg.batch, 1, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
        self.y = torch.arange(cfg.batch) % 4

    def train_step(self) -> float:
        self.model.train()
        t0 = time.perf_counter()
        with autocast("cpu", self.precision):
            logits = self.model(self.x)
        loss = F.cross_entropy(logits.float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0

    @torch.no_grad()
    def predict(self) -> float:
        self.model.eval()
        t0 = time.perf_counter()
        with autocast("cpu", self.precision):
            torch.softmax(self.model(self.x).float(), 1)
        return time.perf_counter() - t0


def bench_arch(arch: str, cfg: ClassifyPrecisionConfig) -> dict:
    arms = {"fp32": Arm(arch, "no", cfg), "bf16": Arm(arch, "bf16", cfg)}
    for arm in arms.values():  # warm-up (allocator, oneDNN primitive cache)
        arm.train_step()
        arm.predict()
    rounds: dict[str, dict[str, list[float]]] = {n: {"train": [], "predict": []} for n in arms}
    for r in range(cfg.rounds):
        for name, arm in arms.items():
            rounds[name]["train"].append(float(np.median([arm.train_step() for _ in range(cfg.steps)])))
        for name, arm in arms.items():
            rounds[name]["predict"].append(float(np.median([arm.predict() for _ in range(cfg.steps)])))
        print(f"  {arch} round {r + 1}: " + ", ".join(
            f"{n} train {cfg.batch / v['train'][-1]:.0f} / predict {cfg.batch / v['predict'][-1]:.0f} img/s"
            for n, v in rounds.items()), flush=True)
    out: dict = {"per_round_s": rounds}
    for kind in ("train", "predict"):
        ratios = [a / b for a, b in zip(rounds["fp32"][kind], rounds["bf16"][kind])]
        out[f"{kind}_ratio_bf16_vs_fp32"] = float(np.median(ratios))
        out[f"{kind}_ratio_per_round"] = ratios
        for n in arms:
            out[f"{kind}_images_per_s_{n}"] = cfg.batch / float(np.median(rounds[n][kind]))
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ClassifyPrecisionConfig, argv, description=__doc__.split("\n")[0])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    flags = cpu_flags()
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "config": to_dict(cfg),
        "device": f"cpu: {cpu_name()}, {os.cpu_count()} cores", "threads": torch.get_num_threads(),
        "cpu_bf16_flags": sorted(f for f in flags if f in (*NATIVE_BF16_FLAGS, "amx_tile", "amx_int8", "avx512f")),
        "load_average_start": list(os.getloadavg()),
        "versions": {k: v for k, v in package_versions().items() if k in ("torch", "numpy")},
        "results": {},
    }
    t0 = time.perf_counter()
    for arch in cfg.archs:
        print(f"{arch} at {cfg.image_size} px, batch {cfg.batch}, {torch.get_num_threads()} thread(s)", flush=True)
        record["results"][arch] = bench_arch(arch, cfg)
        record["load_average_end"] = list(os.getloadavg())
        record["wall_s"] = time.perf_counter() - t0
        write_json(cfg.out, record)
    for arch, r in record["results"].items():
        print(f"{arch:10s} train {r['train_images_per_s_fp32']:7.1f} -> {r['train_images_per_s_bf16']:7.1f} img/s "
              f"({r['train_ratio_bf16_vs_fp32']:.2f}x)  predict {r['predict_images_per_s_fp32']:7.1f} -> "
              f"{r['predict_images_per_s_bf16']:7.1f} img/s ({r['predict_ratio_bf16_vs_fp32']:.2f}x)")
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
