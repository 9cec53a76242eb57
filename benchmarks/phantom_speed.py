"""Benchmark: phantom frames per second on the prepared path (render at 112×112), one process and all cores.

  python benchmarks/phantom_speed.py [--n 2000] [--size 112] [--out benchmarks/results/phantom_speed.json]

Writes the numbers with the CPU, core count and library versions as JSON.
"""

from __future__ import annotations

import os

# Tiny matrices only: BLAS threads would fight the worker processes for the cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scipy

from echosynth.gen.core.io import write_json
from echosynth.gen.core.rundir import cpu_name, load_average
from echosynth.gen.data import phantom


def _render_chunk(args: tuple[list, int, int]) -> int:
    items, seed, size = args
    for item in items:
        phantom.render(item, seed, size)
    return len(items)


def main(argv: list[str] | None = None) -> dict:
    """Time plan + render on one process and on every core; print and save images/second."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images to render per measurement")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "phantom_speed.json"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    items = phantom.plan(args.n, seed=args.seed)
    plan_s = time.perf_counter() - t0
    _render_chunk((items[:20], args.seed, args.size))  # warm the geometry caches

    load_before = load_average()
    t0, c0 = time.perf_counter(), time.process_time()
    _render_chunk((items, args.seed, args.size))
    one = args.n / (time.perf_counter() - t0)
    per_cpu_s = args.n / (time.process_time() - c0)  # robust to other load on the machine

    chunks = [items[i::args.workers * 4] for i in range(args.workers * 4)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        list(pool.map(_render_chunk, [(c[:5], args.seed, args.size) for c in chunks[: args.workers]]))  # start + warm
        t0 = time.perf_counter()
        done = sum(pool.map(_render_chunk, [(c, args.seed, args.size) for c in chunks]))
        many = done / (time.perf_counter() - t0)

    result = {
        "benchmark": "phantom render, prepared path",
        "size": args.size, "n": args.n, "seed": args.seed,
        "img_per_s": round(many, 1), "workers": args.workers,
        "img_per_s_1proc": round(one, 1),
        "img_per_cpu_s": round(per_cpu_s, 1),
        "plan_s": round(plan_s, 3),
        "device": f"cpu: {cpu_name()} ({os.cpu_count()} logical cores)",
        "load_avg_1min_before": load_before,
        "numpy": np.__version__, "scipy": scipy.__version__, "python": platform.python_version(),
        "command": "python benchmarks/phantom_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    write_json(args.out, result)
    print(f"phantom {args.size}x{args.size}: {one:.0f} img/s on 1 process ({per_cpu_s:.0f} per CPU-second), "
          f"{many:.0f} img/s on {args.workers} workers (plan of {args.n}: {plan_s:.2f} s; load {load_before}) "
          f"-> {args.out}")
    return result


if __name__ == "__main__":
    main()
