"""Benchmark the privacy audit's exact nearest-neighbour search at (a slice of) the thesis scale.

  python benchmarks/privacy_nn.py                                   # 2,048 queries × 31,000 train at 112 px
  python benchmarks/privacy_nn.py --n_query 32000 --device cuda     # the whole thing on a GPU

The target is 32,000 synthetic × 31,000 training images at 112×112 (thesis: 32k samples per
subset, 31,130 training images). The training set is always built at full size, so memory is the
real thing; the query set may be a slice, and the time is extrapolated linearly in the number of
queries (every stage is a loop over query blocks against the whole training set), as the JSON
says. Images are random uint8: the cost of exact search does not depend on content.
Writes benchmarks/results/privacy_nn.json.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass

from echosynth.gen.core.config import field, parse_config


@dataclass
class BenchConfig:
    n_query: list[int] = field(default_factory=lambda: [2048],
                               help="query counts measured; the largest is extrapolated to target_query")
    n_ref: int = field(31000, help="training images (the full target size)", min=2)
    target_query: int = field(32000, help="synthetic images of the full-scale run", min=1)
    size: int = field(112, help="image side in pixels", min=8)
    k: int = field(50, help="pixel neighbours kept (the Carlini criterion's 50)", min=1)
    max_shift: int = field(2, help="tolerant distance: largest shift", min=0)
    shift_candidates: int = field(20, help="tolerant distance: screened candidates", min=1)
    lowres_size: int = field(16, help="tolerant distance: screening resolution", min=2)
    device: str = field("cpu", help="cpu or cuda")
    out: str = field("benchmarks/results/privacy_nn.json", help="result JSON")
    seed: int = field(0, help="seed of the random images")


def _lap(t0: float, device: str) -> float:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(BenchConfig, argv, description=__doc__)
    import numpy as np
    import torch

    from echosynth.evaluate.copy_detection import screen_candidates, tolerant_distance
    from echosynth.evaluate.neighbours import knn
    from echosynth.gen.core.io import write_json
    from echosynth.gen.core.rundir import hardware, package_versions

    rng = np.random.default_rng(cfg.seed)
    train = rng.integers(0, 256, (cfg.n_ref, cfg.size, cfg.size), dtype=np.uint8)
    runs = []
    for n in sorted(cfg.n_query):
        query = rng.integers(0, 256, (n, cfg.size, cfg.size), dtype=np.uint8)
        stages = {}
        t = time.perf_counter()
        _, i = knn(query, train, cfg.k, scale=1 / 255, device=cfg.device, progress=sys.stderr.isatty())
        stages["pixel_l2_knn"] = _lap(t, cfg.device)
        t = time.perf_counter()
        screened = screen_candidates(query, train, cfg.shift_candidates, cfg.max_shift, cfg.lowres_size, cfg.device,
                                     progress=sys.stderr.isatty())
        stages["shift_aware_screening"] = _lap(t, cfg.device)
        t = time.perf_counter()
        tolerant_distance(query, train, np.concatenate([i[:, :5], screened], 1), cfg.max_shift, device=cfg.device)
        stages["tolerant_distance"] = _lap(t, cfg.device)
        runs.append({"n_query": n, "seconds": stages, "total_seconds": sum(stages.values())})
        print(f"{n} × {cfg.n_ref} at {cfg.size} px: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
    fit = {}
    big = runs[-1]  # largest measured query count
    for stage in big["seconds"]:
        per_query = big["seconds"][stage] / big["n_query"]
        fit[stage] = {"seconds_per_query": per_query, "seconds_at_target": per_query * cfg.target_query}
    total = sum(f["seconds_at_target"] for f in fit.values())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "measured": runs, "peak_rss_mb": peak_mb, "train_mb": train.nbytes / 2**20,
        "extrapolated_to": {"n_query": cfg.target_query, "n_ref": cfg.n_ref, "size": cfg.size, "stages": fit,
                            "total_minutes": total / 60,
                            "input_mb": (train.nbytes + cfg.target_query * cfg.size ** 2) / 2**20,
                            "method": f"proportional to the number of queries from the largest measured run "
                                      f"({big['n_query']} queries; the training set was full size; fixed costs are "
                                      "scaled up too, so this errs high)"},
        "settings": {"k": cfg.k, "max_shift": cfg.max_shift, "shift_candidates": cfg.shift_candidates,
                     "lowres_size": cfg.lowres_size, "device": cfg.device, "torch_threads": torch.get_num_threads()},
        "machine": {**hardware(), "load_average_1min": os.getloadavg()[0]},
        "packages": {k: v for k, v in package_versions().items() if k in ("torch", "numpy")},
    }
    write_json(cfg.out, result)
    print(f"peak RSS {peak_mb:.0f} MB; extrapolated to {cfg.target_query} × {cfg.n_ref}: {total / 60:.1f} min on "
          f"{cfg.device} (" + ", ".join(f"{k} {v['seconds_at_target'] / 60:.1f}" for k, v in fit.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
