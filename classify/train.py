"""Train view classifiers (or CACTUS quality graders) on real, synthetic, mixed, upsampled or SMOTE sets.

    [accelerate launch] classify/train.py --config configs/classify/quick.yaml \\
        --train real:split/train_120.csv --val split/val.csv --test split/test.csv,split/shift.csv

Writes RUN/seed-<s>/ (config, provenance, model.json, checkpoints/best|last.safetensors,
metrics.json, training.json, predictions_<set>.csv, confusion_<set>.png, stats.jsonl) and RUN/summary.json
(mean, sd, n over seeds per evaluation set and metric; `training`: optimizer steps per seed, epochs,
and the split that selected the checkpoint, which findings must not be computed on).
"""

from __future__ import annotations

import sys
from pathlib import Path

from echosynth.classify.settings import SPEC_DOC, ClassifierTrainConfig
from echosynth.gen.core.config import parse_config, to_dict
from echosynth.gen.core.io import read_json, write_json
from echosynth.gen.core.launcher import GracefulStop, Interrupted, resume_command
from echosynth.gen.core.rundir import check_resumable, init_run_dir, provenance, start_run
from echosynth.gen.core.script import run_script, user_errors
from echosynth.gen.core.tracking import accelerator_kwargs, start_trackers

# torch, the image sets and the models are imported after parsing, so --help and config errors answer fast


def load_data(cfg: ClassifierTrainConfig):
    """Training set and evaluation sets (val first), checked for class coverage and patient leakage."""
    from echosynth.classify.datasets import (
        build_training_set,
        check_no_leakage,
        parse_eval_arg,
        parse_spec,
    )
    from echosynth.classify.quality import check_grades
    from echosynth.gen.data.image_sets import ManifestRef, load_image_set
    from echosynth.gen.data.manifest import verify_manifest

    spec = parse_spec(cfg.train)
    if cfg.verify:  # before anything is decoded: a changed file is named by its manifest line
        for ref in [*spec.sources, *(ManifestRef(parse_eval_arg(t)[1]) for t in [cfg.val, *cfg.test])]:
            verify_manifest(ref.path, ref.split, ref.subset)
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


# keys a resumed run may change: where it writes, how it reports, how fast it decodes
RESUME_MAY_DIFFER = {"verify", "resume", "overwrite", "run_dir", "out", "description", "progress", "workers", "threads",
                     "eval_batch", "checkpoint_every", "log_with"}


def resume_run_dir(cfg: ClassifierTrainConfig, config: dict) -> Path:
    """The run `--resume` continues, refused if its saved config differs in anything that changes the result."""
    if cfg.resume == "latest":
        if cfg.run_dir:
            run = Path(cfg.run_dir)
        else:
            runs = sorted(Path(cfg.out).glob("[0-9][0-9][0-9][0-9][0-9]-classify*")) if Path(cfg.out).is_dir() else []
            run = next((r for r in reversed(runs) if (r / "config.json").is_file()), None)
            if run is None:
                raise FileNotFoundError(f"--resume latest: no classify run under {cfg.out}/ (give --run_dir or a run directory)")
    else:
        run = Path(cfg.resume)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"--resume: {run} is not a classify run (no config.json)")
    check_resumable(run, config, RESUME_MAY_DIFFER)
    write_json(run / "config.json", config)
    return run


def make_run_dir(cfg: ClassifierTrainConfig, config: dict, kind: str, inputs: dict, world: int) -> Path:
    """The run to continue (--resume), the explicit --run_dir (refused if used, unless --overwrite) or the next numbered one."""
    if cfg.resume:
        return resume_run_dir(cfg, config)
    if cfg.run_dir:
        try:
            return init_run_dir(cfg.run_dir, config, overwrite=cfg.overwrite, world_size=world, inputs=inputs)
        except FileExistsError:
            raise FileExistsError(f"{cfg.run_dir} already holds a run; pass --resume latest to continue it "
                                  "or --overwrite to replace it") from None
    desc = cfg.description or f"{cfg.arch}-{cfg.task}-{kind}"
    return start_run(cfg.out, "classify", desc, config, world_size=world, inputs=inputs)


@user_errors("classify/train.py", FileExistsError, FileNotFoundError, ValueError, code=1)
def main(argv: list[str] | None = None) -> None:
    """Parse the config, build the sets, train every seed, write the summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    if "--epochs" in given and not given & {"--steps", "--eval_every"}:
        # --epochs on the command line asks for an epoch budget over a config file's step budget
        argv += ["--steps", "0", "--eval_every", "0"]
    cfg = parse_config(ClassifierTrainConfig, argv, description=__doc__.split("\n")[0], epilog=SPEC_DOC)
    import torch
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    from echosynth.classify.metrics import summarize_seeds
    from echosynth.gen.core.hardware import resolve_for

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # before the Accelerator: bad input (SpecError, ManifestError: ValueErrors) fails fast, in every process alike
    spec, train, evals, inputs = load_data(cfg)
    cuda = torch.cuda.is_available()
    mp, mp_from = resolve_for(cfg.mixed_precision, "cuda" if cuda else "cpu")
    accelerator = Accelerator(cpu=not cuda, mixed_precision=mp, **accelerator_kwargs(cfg.log_with, cfg.out))
    main_proc = accelerator.is_main_process
    config = to_dict(cfg)
    holder = [None]
    if main_proc:
        try:
            holder = [str(make_run_dir(cfg, config, spec.kind, inputs, accelerator.num_processes))]
        except (FileExistsError, FileNotFoundError, ValueError) as e:
            holder = [f"error: {e}"]
    broadcast_object_list(holder)  # the main process's run-directory error stops every process
    if holder[0].startswith("error: "):
        raise ValueError(holder[0].removeprefix("error: "))
    run = Path(holder[0])
    start_trackers(accelerator, cfg.log_with, run, config)  # --log_with: RUN/tracking/ (ended by end_training)
    if main_proc:
        write_json(run / "data.json", {"train": train.info, "eval": {n: {"n": len(s), "class_counts": s.class_counts()}
                                                                      for n, s in evals.items()}})
        print(f"run directory: {run}\ntraining set {cfg.train}: {train.class_counts()} ({len(train)} images), "
              f"precision {mp} ({mp_from})")
    per_seed, training = [], []
    for seed in cfg.seeds:
        seed_dir = run / f"seed-{seed}"
        if cfg.resume and (seed_dir / "metrics.json").is_file():  # finished before the interruption
            per_seed.append(read_json(seed_dir / "metrics.json"))
            training.append(read_json(seed_dir / "training.json") if (seed_dir / "training.json").is_file() else {})
            if main_proc:
                print(f"seed {seed}: finished earlier ({seed_dir / 'metrics.json'})")
            continue
        if main_proc:
            seed_dir.mkdir(parents=True, exist_ok=True)
            write_json(seed_dir / "config.json", {**config, "seed": seed})
            write_json(seed_dir / "provenance.json", provenance(seed=seed, world_size=accelerator.num_processes,
                                                                inputs=inputs, parents=[]))
        accelerator.wait_for_everyone()
        result = _train_seed_or_stop(run, accelerator, cfg, train, evals, seed, seed_dir)
        per_seed.append(result["metrics"])
        training.append(result["training"])
        if main_proc:
            line = ", ".join(f"{n} AUPRC {m['macro_auprc']:.4f}" for n, m in result["metrics"].items())
            t = result["training"]
            picked = f"best on {t['selected_on']} at step {t['best_step']}" if t["selected_on"] else "last"
            print(f"seed {seed}: {t['optimizer_steps']} optimizer steps ({t['epochs']} epochs of {t['images']} images), "
                  f"checkpoint {picked}; {line}")
    if main_proc:
        sets = summarize_seeds(per_seed)
        write_json(run / "summary.json", {**sets, "training": training_summary(training)})
        for name, d in sets.items():
            auprc = d["macro_auprc"]
            print(f"{name}: macro AUPRC {auprc['mean']:.4f} ± {auprc['sd']:.4f} (n={auprc['n']})")
    accelerator.wait_for_everyone()
    accelerator.end_training()


def training_summary(per_seed: list[dict]) -> dict:
    """summary.json's `training`: the budget every seed got (optimizer_steps per seed) and how its checkpoint was chosen."""
    first = next((t for t in per_seed if t), {})
    return {"optimizer_steps": {str(t["seed"]): t["optimizer_steps"] for t in per_seed if t},
            "best_step": {str(t["seed"]): t.get("best_step") for t in per_seed if t},
            **{k: first.get(k) for k in ("images", "epochs", "steps_per_epoch", "eval_every", "global_batch", "budget",
                                         "checkpoint", "selected_on", "precise_bn")}}


def _train_seed_or_stop(run: Path, *args):
    """train_seed; on Ctrl-C/SIGTERM, Interrupted carrying the command that continues this run."""
    from echosynth.classify.loop import train_seed

    try:
        return train_seed(*args)
    except Interrupted as e:
        name = {130: "SIGINT", 143: "SIGTERM"}.get(e.exit_code, "a signal")
        raise Interrupted(f"{name}: stopped in {e}; the epoch checkpoints under {run}/seed-*/checkpoints/ are kept; "
                          f"continue with: {resume_command({'--run_dir': str(run), '--resume': 'latest'})}",
                          e.exit_code) from None


def run_with_signals(argv: list[str] | None = None) -> int | None:
    """main() with Ctrl-C/SIGTERM stopping after the current step: one line saying how to continue, exit 130/143."""
    with GracefulStop():
        return main(argv)


if __name__ == "__main__":
    run_script(run_with_signals)
