"""Training and inference throughput (images/s) of each classifier architecture on this machine.

    .venv/bin/python benchmarks/classify_speed.py --image_size 32 --archs resnet18,madani --threads 1

Writes benchmarks/results/classify_speed.json (and prints a table). Random inputs: this measures
the model step (forward, backward, SGD update; forward alone for inference), not data loading.
"""

from __future__ import annotations

import dataclasses
import time

from echosynth.classify.models import MODELS, build_classifier
from echosynth.gen.core.checkpoint import count_parameters
from echosynth.gen.core.config import field, parse_config
from echosynth.gen.core.io import write_json


@dataclasses.dataclass
class SpeedConfig:
    """benchmarks/classify_speed.py settings."""

    archs: list[str] = field(default_factory=lambda: ["madani", "resnet18", "mobilenet_v2", "densenet121"],
                             choices=tuple(MODELS), help="architectures to time")
    image_size: int = field(32, min=32, help="input size")
    batch: int = field(32, min=2, help="images per step")
    steps: int = field(5, min=1, help="timed steps (after one warm-up step)")
    threads: int = field(0, min=0, help="torch CPU threads (0: default)")
    out: str = field("benchmarks/results/classify_speed.json", help="JSON results file")


def time_arch(arch: str, cfg: SpeedConfig, device) -> dict:
    """Images/s for training steps and for inference of one architecture."""
    import torch
    import torch.nn.functional as F

    model = build_classifier(arch, 4, cfg.image_size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(cfg.batch, 1, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    y = torch.randint(0, 4, (cfg.batch,), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(cfg.steps + 1):
        if i == 1:
            sync()
            t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    train = cfg.steps * cfg.batch / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        model(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(cfg.steps):
            model(x)
        sync()
    infer = cfg.steps * cfg.batch / (time.perf_counter() - t0)
    return {"arch": arch, "params": count_parameters(model), "train_images_per_s": round(train, 1),
            "infer_images_per_s": round(infer, 1)}


def main(argv: list[str] | None = None) -> None:
    """Time every requested architecture and write the results."""
    import torch

    from echosynth.gen.core.rundir import hardware

    cfg = parse_config(SpeedConfig, argv, description=__doc__.split("\n")[0])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [time_arch(a, cfg, device) for a in cfg.archs]
    for r in rows:
        print(f"{r['arch']:>13}  {r['params']:>11,} params  train {r['train_images_per_s']:>8} img/s  "
              f"infer {r['infer_images_per_s']:>8} img/s")
    write_json(cfg.out, {"config": dataclasses.asdict(cfg), "device": str(device), "threads": torch.get_num_threads(),
                         "hardware": hardware(), "results": rows})


if __name__ == "__main__":
    main()
