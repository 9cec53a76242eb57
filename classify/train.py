"""Train view classifiers (or CACTUS quality graders) on real, synthetic, mixed, upsampled or SMOTE sets.

    [accelerate launch] classify/train.py --config configs/classify/quick.yaml \\
        --train real:split/train_120.csv --val split/val.csv --test split/test.csv,split/shift.csv

Writes RUN/seed-<s>/ (config, provenance, model.json, checkpoints/best|last.safetensors,
metrics.json, predictions_<set>.csv, confusion_<set>.png, stats.jsonl) and RUN/summary.json
(mean, sd, n over seeds per evaluation set and metric).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classify.datasets import (  # noqa: E402
    SpecError,
    build_training_set,
    check_no_leakage,
    load_image_set,
    parse_eval_arg,
    parse_spec,
)
from classify.datasets import __doc__ as SPEC_DOC  # noqa: E402
from classify.metrics import summarize_seeds  # noqa: E402
from classify.training import TrainConfig, train_seed  # noqa: E402
from gen.config import parse_config, to_dict  # noqa: E402
from gen.data.manifest import ManifestError  # noqa: E402
from gen.io import write_json  # noqa: E402
from gen.rundir import init_run_dir, provenance, start_run  # noqa: E402


def load_data(cfg: TrainConfig):
    """Training set and evaluation sets (val first), checked for class coverage and patient leakage."""
    from classify.quality import check_grades

    spec = parse_spec(cfg.train)
    train = build_training_set(cfg.train, cfg.classes, cfg.image_size, seed=cfg.data_seed,
                               allow_empty_classes=cfg.allow_empty_classes, workers=cfg.workers)
    evals = {}
    for text in [cfg.val, *cfg.test]:
        name, path = parse_eval_arg(text)
        if name in evals:
            raise ValueError(f"two evaluation sets are named {name!r}; name them with name=PATH")
        evals[name] = load_image_set(path, cfg.classes, cfg.image_size, name=name, workers=cfg.workers)
    check_no_leakage(train, evals)
    if cfg.task == "quality":
        check_grades(train, "training set")
        check_grades(next(iter(evals.values())), "validation set")
    inputs = {f"train{i}": r.path for i, r in enumerate(spec.sources)}
    inputs.update({n: parse_eval_arg(t)[1] for n, t in zip(evals, [cfg.val, *cfg.test])})
    return spec, train, evals, inputs


def make_run_dir(cfg: TrainConfig, config: dict, kind: str, inputs: dict, world: int) -> Path:
    """The explicit --run_dir (refused if used, unless --overwrite) or the next numbered one under --out."""
    if cfg.run_dir:
        return init_run_dir(cfg.run_dir, config, overwrite=cfg.overwrite, world_size=world, inputs=inputs)
    desc = cfg.description or f"{cfg.arch}-{cfg.task}-{kind}"
    return start_run(cfg.out, "classify", desc, config, world_size=world, inputs=inputs)


def main(argv: list[str] | None = None) -> None:
    """Parse the config, build the sets, train every seed, write the summary."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    cfg = parse_config(TrainConfig, argv, description=__doc__.split("\n")[0], epilog=SPEC_DOC)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:  # before the Accelerator: bad input fails fast, in every process alike
        spec, train, evals, inputs = load_data(cfg)
    except (SpecError, ManifestError, ValueError, FileNotFoundError) as e:
        sys.exit(f"classify/train.py: error: {e}")
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision=cfg.mixed_precision if cuda else "no")
    main_proc = accelerator.is_main_process
    config = to_dict(cfg)
    holder = [None]
    if main_proc:
        try:
            holder = [str(make_run_dir(cfg, config, spec.kind, inputs, accelerator.num_processes))]
        except FileExistsError as e:
            holder = [f"error: {e}"]
    broadcast_object_list(holder)
    if holder[0].startswith("error: "):
        sys.exit(f"classify/train.py: {holder[0]}")
    run = Path(holder[0])
    if main_proc:
        write_json(run / "data.json", {"train": train.info, "eval": {n: {"n": len(s), "class_counts": s.class_counts()}
                                                                      for n, s in evals.items()}})
        print(f"run directory: {run}\ntraining set {cfg.train}: {train.class_counts()} ({len(train)} images)")
    per_seed = []
    for seed in cfg.seeds:
        seed_dir = run / f"seed-{seed}"
        if main_proc:
            seed_dir.mkdir(parents=True, exist_ok=True)
            write_json(seed_dir / "config.json", {**config, "seed": seed})
            write_json(seed_dir / "provenance.json", provenance(seed=seed, world_size=accelerator.num_processes,
                                                                inputs=inputs, parents=[]))
        accelerator.wait_for_everyone()
        result = train_seed(accelerator, cfg, train, evals, seed, seed_dir)
        per_seed.append(result["metrics"])
        if main_proc:
            line = ", ".join(f"{n} AUPRC {m['macro_auprc']:.4f}" for n, m in result["metrics"].items())
            print(f"seed {seed}: best epoch {result['best_epoch']}; {line}")
    if main_proc:
        summary = summarize_seeds(per_seed)
        write_json(run / "summary.json", summary)
        for name, d in summary.items():
            auprc = d["macro_auprc"]
            print(f"{name}: macro AUPRC {auprc['mean']:.4f} ± {auprc['sd']:.4f} (n={auprc['n']})")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
