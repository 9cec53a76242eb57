"""torch.compile on CPU for the demo's tiny UNet: one-off warm-up time, steady gain in bf16, break-even evaluations.

    .venv/bin/python benchmarks/ddpm_compile_cpu.py                        # tiny @ 32 px, batch 16, 1 thread, ≤ 6 min
    .venv/bin/python benchmarks/ddpm_compile_cpu.py --rounds 1 --timeout_s 60 --out /tmp/c.json

The measurement runs in a subprocess killed after `--timeout_s`; if compiling does not finish in time the
JSON says so (`finished: false`) with whatever was measured. Arms bf16 eager and bf16 compiled
(echosynth.gen.core.hardware.Compiled, as `compile: true` runs it), each on its own copy of the same UNet: a training step
(q_sample, forward under autocast, hybrid loss in fp32, backward, AdamW) and a no-grad sampling forward.
Warm-up = first call of the compiled arm minus the eager arm's median. Then `--rounds` interleaved rounds
(eager, compiled, eager, compiled ...); ratio per round = eager time / compiled time, median reported.
Break-even = warm-up / (eager − compiled seconds per UNet evaluation), to compare with
echosynth.gen.core.hardware.COMPILE_MIN_CPU_EVALS. Writes benchmarks/results/ddpm_compile_cpu.json.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
import torch
from ddpm_precision import (
    Arm,  # the same timed arm, run as a sibling script (benchmarks/ is on sys.path)
)

from echosynth.gen.core.config import field, parse_config, to_dict
from echosynth.gen.core.hardware import COMPILE_MIN_CPU_EVALS
from echosynth.gen.core.io import read_json, write_json
from echosynth.gen.core.launcher import NATIVE_BF16_FLAGS, cpu_flags
from echosynth.gen.core.rundir import cpu_name, package_versions


@dataclasses.dataclass
class CompileBenchConfig:
    """benchmarks/ddpm_compile_cpu.py settings."""

    preset: str = field("tiny", help="UNet preset")
    image_size: int = field(32, min=8, help="image size")
    batch: int = field(16, min=1, help="images per training step and per sampling forward")
    steps: int = field(1, min=1, help="timed iterations per arm and round (median taken)")
    rounds: int = field(8, min=1, help="interleaved rounds")
    threads: int = field(1, min=0, help="torch threads (0: default)")
    timeout_s: int = field(360, min=10, help="kill the measurement after this many seconds")
    child: bool = field(False, help="internal: run the measurement in this process")
    out: str = field("benchmarks/results/ddpm_compile_cpu.json", help="output JSON")


def measure(cfg: CompileBenchConfig, record: dict) -> None:
    """The child: warm-ups, then interleaved rounds; the JSON is rewritten after every stage."""
    logs: list[str] = []
    record["compile_log"] = logs
    eager, comp = (Arm(cfg.preset, cfg.image_size, "bf16", compiled, cfg.batch, log=logs.append)
                   for compiled in (False, True))
    eager.train_step(), eager.sample_forward()
    eager_train = float(np.median([eager.train_step() for _ in range(2)]))
    eager_sample = float(np.median([eager.sample_forward() for _ in range(2)]))
    first_sample = comp.sample_forward()
    record["sample_first_call_s"] = first_sample
    record["sample_warmup_s"] = max(first_sample - eager_sample, 0.0)
    print(f"sampling forward: compiled first call {first_sample:.1f} s (eager {eager_sample:.2f} s)", flush=True)
    write_json(cfg.out, record)
    first_train = comp.train_step()
    record["train_first_call_s"] = first_train
    record["train_warmup_s"] = max(first_train - eager_train, 0.0)
    print(f"training step: compiled first call {first_train:.1f} s (eager {eager_train:.2f} s)", flush=True)
    comp.train_step(), comp.sample_forward()  # second calls (guards, any recompile)
    write_json(cfg.out, record)
    rounds = {a: {"train": [], "sample": []} for a in ("bf16_eager", "bf16_compiled")}
    for r in range(cfg.rounds):
        for kind in ("train", "sample"):
            for name, arm in (("bf16_eager", eager), ("bf16_compiled", comp)):
                fn = arm.train_step if kind == "train" else arm.sample_forward
                rounds[name][kind].append(float(np.median([fn() for _ in range(cfg.steps)])))
        print(f"round {r + 1}: " + ", ".join(f"{n} train {cfg.batch / v['train'][-1]:.1f} / sample "
                                              f"{cfg.batch / v['sample'][-1]:.1f} img/s" for n, v in rounds.items()), flush=True)
        record["per_round_s"] = rounds
        record["rounds_done"] = r + 1
        write_json(cfg.out, record)
    for kind in ("train", "sample"):
        e, c = rounds["bf16_eager"][kind], rounds["bf16_compiled"][kind]
        ratios = [a / b for a, b in zip(e, c)]
        gain = float(np.median(e)) - float(np.median(c))  # seconds saved per UNet evaluation (one batch)
        warm = record[f"{kind}_warmup_s"]
        record[kind] = {
            "images_per_s_eager": cfg.batch / float(np.median(e)), "images_per_s_compiled": cfg.batch / float(np.median(c)),
            "ratio_compiled_vs_eager": float(np.median(ratios)), "ratio_per_round": ratios,
            "seconds_saved_per_eval": gain,
            "break_even_evals": (warm / gain) if gain > 0 else None,
        }
    record["finished"] = True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(CompileBenchConfig, argv, description=__doc__.split("\n")[0])
    if cfg.child:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        record = read_json(cfg.out)
        record["threads"] = torch.get_num_threads()
        measure(cfg, record)
        write_json(cfg.out, record)
        return 0
    flags = cpu_flags()
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "config": to_dict(cfg),
        "device": f"cpu: {cpu_name()}, {os.cpu_count()} cores",
        "cpu_bf16_flags": sorted(f for f in flags if f in (*NATIVE_BF16_FLAGS, "amx_tile", "amx_int8", "avx512f")),
        "load_average_start": list(os.getloadavg()),
        "versions": {k: v for k, v in package_versions().items() if k in ("torch", "numpy")},
        "compile_min_cpu_evals": COMPILE_MIN_CPU_EVALS, "finished": False,
    }
    write_json(cfg.out, record)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run([sys.executable, __file__, *argv, "--child", "true"], timeout=cfg.timeout_s).returncode
        timed_out = False
    except subprocess.TimeoutExpired:
        rc, timed_out = None, True
    record = read_json(cfg.out)
    record.update(wall_s=time.perf_counter() - t0, timed_out=timed_out, child_returncode=rc,
                  load_average_end=list(os.getloadavg()))
    if timed_out:
        record["note"] = f"killed after {cfg.timeout_s} s: compiling and/or the rounds did not finish in time"
    for kind in ("sample", "train"):
        if kind in record:
            r = record[kind]
            be = r["break_even_evals"]
            print(f"{kind}: eager {r['images_per_s_eager']:.1f} img/s, compiled {r['images_per_s_compiled']:.1f} img/s "
                  f"({r['ratio_compiled_vs_eager']:.2f}x), warm-up {record[f'{kind}_warmup_s']:.0f} s, "
                  f"break-even {'never' if be is None else f'{be:.0f}'} evaluations (auto threshold {COMPILE_MIN_CPU_EVALS})")
    write_json(cfg.out, record)
    print(f"wrote {cfg.out}" + (" (timed out)" if timed_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
