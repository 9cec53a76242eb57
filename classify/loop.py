"""Training config and loop for view classifiers and quality graders (accelerate, CPU or CUDA).

Images live in memory as uint8 (N×S×S); each step moves one global batch's share per process
to the device, augments it there, and steps the (DDP-wrapped) model. Batches, augmentation and
the class-balanced sampler are seeded per (seed, epoch) and item, so a run's data order does not
depend on the number of processes. Evaluation splits rows over processes and gathers the
probabilities; the main process scores, selects and saves.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from echosynth.classify import quality as q
from echosynth.classify.augment import apply_affine, epoch_params
from echosynth.classify.datasets import balanced_indices, class_weights
from echosynth.classify.metrics import (
    classification_metrics,
    grade_metrics,
    predictions_frame,
    save_confusion_png,
    write_predictions,
)
from echosynth.classify.models import (
    Classifier,
    build_classifier,
    load_classifier,
    model_info,
    view_loss,
)
from echosynth.classify.resume import check_stop, load_epoch_state, save_epoch_state
from echosynth.classify.settings import FROZEN_BACKBONES, ClassifierTrainConfig
from echosynth.gen.core.io import append_jsonl, atomic_path, write_json
from echosynth.gen.core.launcher import progress_wanted
from echosynth.gen.core.tracking import (
    confusion_markdown,
    log_image_file,
    log_metrics,
    log_text,
)
from echosynth.gen.data.image_sets import ImageSet

LOWER_IS_BETTER = {"grade_mse", "grade_mae", "val_loss"}


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


def _rng(*keys) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


def to_input(images: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 N×S×S → float N×1×S×S in [-1, 1] on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
    x = x.unsqueeze(1).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def save_state(model: torch.nn.Module, path: Path) -> None:
    """Atomically save a state_dict as safetensors (contiguous, on CPU)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


@torch.no_grad()
def predict(accelerator, model: Classifier, images: np.ndarray, batch: int, channels_last: bool = False,
            with_grade: bool = False, progress: bool = False, desc: str = "eval") -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax probabilities N×K (and grades N) for uint8 images, rows split over processes and gathered."""
    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    n = len(images)
    per = math.ceil(n / world)
    mine = np.arange(rank, n, world)
    mine = np.concatenate([mine, np.full(per - len(mine), -1)])  # pad so every rank gathers as many rows
    probs, grades = [], []
    for s in tqdm(range(0, per, batch), desc=desc, disable=not progress, leave=False):
        idx = mine[s:s + batch]
        x = to_input(images[np.maximum(idx, 0)], accelerator.device, channels_last)
        with accelerator.autocast():
            out = model(x, with_grade=True) if with_grade else model(x)
        logits, grade = out if with_grade else (out, None)
        probs.append(torch.softmax(logits.float(), 1))
        grades.append(grade.float() if grade is not None else torch.zeros(len(idx), device=x.device))
    k = model.head.out_features
    p = torch.cat(probs) if probs else torch.zeros(0, k, device=accelerator.device)
    g = torch.cat(grades) if grades else torch.zeros(0, device=accelerator.device)
    order = torch.as_tensor(mine, device=accelerator.device)
    p, g, order = accelerator.gather(p), accelerator.gather(g), accelerator.gather(order)
    p, g, order = p.cpu().numpy(), g.cpu().numpy(), order.cpu().numpy()
    keep = order >= 0
    out_p, out_g = np.zeros((n, k)), np.zeros(n)
    out_p[order[keep]], out_g[order[keep]] = p[keep], g[keep]
    return out_p, (out_g if with_grade else None)


def score(s: ImageSet, probs: np.ndarray, grades: np.ndarray | None) -> dict:
    """Classification metrics (+ grade metrics for a grader) of one evaluation set."""
    m = classification_metrics(s.labels, probs, s.classes, s.video_ids)
    if grades is not None:
        m.update(grade_metrics(s.quality, grades))
    return m


def is_better(metric: str, new: float | None, best: float | None) -> bool:
    """Whether `new` improves on `best` for a selection metric."""
    if new is None:
        return False
    if best is None:
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best


# ----------------------------------------------------------------------------------------------
# One seed


def make_optimizer(cfg: ClassifierTrainConfig, params) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam over `params`."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclasses.dataclass
class Budget:
    """How long one phase trains: optimizer steps in all, steps between validations, and what one epoch is."""

    steps: int
    eval_every: int
    steps_per_epoch: int
    per_step_schedule: bool  # the LR schedule runs over steps (a step budget), else over epochs

    @property
    def rounds(self) -> int:
        """Validation rounds (each ends with a validation score and maybe a checkpoint)."""
        return math.ceil(self.steps / self.eval_every)

    def epochs_at(self, step: int) -> float:
        """Passes over the training set after `step` optimizer steps (whole when it is a whole number)."""
        e = step / self.steps_per_epoch
        return int(e) if e == int(e) else round(e, 3)


def make_budget(cfg: ClassifierTrainConfig, n_train: int, epochs: int | None = None) -> Budget:
    """--steps optimizer steps whatever the set's size (validation every --eval_every), else `epochs`
    (default --epochs) passes over it (validation after each): a larger set gets no more steps under a step budget."""
    spe = max(1, math.ceil(n_train / cfg.global_batch))
    if cfg.steps and epochs is None:
        return Budget(cfg.steps, cfg.eval_every or spe, spe, True)
    return Budget((cfg.epochs if epochs is None else epochs) * spe, spe, spe, False)


def make_lr_scheduler(cfg: ClassifierTrainConfig, opt: torch.optim.Optimizer, budget: Budget):
    """StepLR (every step_size rounds), cosine annealing or constant learning rate; stepped once per
    optimizer step under a step budget, once per epoch otherwise."""
    unit = budget.eval_every if budget.per_step_schedule else 1
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, cfg.step_size * unit, cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, budget.steps if budget.per_step_schedule else budget.rounds)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def epoch_order(cfg: ClassifierTrainConfig, labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Item order for one epoch (a class-balanced draw with the sampler), padded to whole global batches."""
    rng = _rng("order", seed, epoch)
    n = len(labels)
    idx = balanced_indices(labels, n, rng) if cfg.balance == "sampler" else rng.permutation(n)
    steps = max(1, math.ceil(n / cfg.global_batch))
    return np.resize(idx, steps * cfg.global_batch)  # wrap around: every batch full (BatchNorm needs > 1)


@torch.no_grad()
def precise_bn(accelerator, net: Classifier, images: np.ndarray, n_max: int, batch: int, channels_last: bool,
               seed: int, round_: int) -> int:
    """Replace the running mean and variance of every trainable BatchNorm by their plain average over up to
    n_max training images (batch statistics of `batch` images each; "precise BN", Wu & Johnson 2021).

    Running averages (momentum 0.1) trail the weights: after a few dozen fast Adam steps they describe
    older weights, and the model predicts one class in eval mode although batch statistics would
    classify well. Frozen layers (no trainable weight) keep theirs. Every process computes the same
    statistics from the same images. Returns the number of images used."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats and (m.weight is None or m.weight.requires_grad)]
    if not bns or n_max <= 0:
        return 0
    idx = np.sort(_rng("precise_bn", seed, round_).permutation(len(images))[:n_max])
    was_training, momenta = net.training, [m.momentum for m in bns]
    net.eval()  # dropout off, as at evaluation; only the BatchNorms below see batch statistics
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    for s in range(0, len(idx), batch):
        part = idx[s:s + batch]
        if len(part) < 2 and s:  # a 1-image batch has no variance
            continue
        with accelerator.autocast():
            net(to_input(images[part], accelerator.device, channels_last))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    net.train(was_training)
    return len(idx)


def run_epochs(accelerator, cfg: ClassifierTrainConfig, net: Classifier, trainable: torch.nn.Module, opt, train: ImageSet,
               val: ImageSet, seed: int, seed_dir: Path, budget: Budget, step_fn, phase: str, select: str,
               with_grade: bool) -> dict:
    """Training loop of `budget.steps` optimizer steps in rounds of `budget.eval_every`: `step_fn(trainable, x, idx)
    -> loss` steps `trainable` (the model or one head); each round ends by scoring `net` on val and keeping the
    best (by `select`) and last checkpoints. Without a step budget a round is one epoch."""
    sched = make_lr_scheduler(cfg, opt, budget)
    # after a kill: continue from the last round's checkpoint (weights, moments, LR, RNG, selection state)
    resumed = load_epoch_state(seed_dir, phase, net, opt, sched, accelerator.is_main_process, tqdm.write) if cfg.resume else None
    net.to(accelerator.device)
    trainable_p, opt = accelerator.prepare(trainable, opt)
    channels_last = cfg.channels_last and accelerator.device.type == "cuda"
    world, rank = accelerator.num_processes, accelerator.process_index
    best, best_epoch, history = resumed[1:] if resumed else (None, -1, [])
    ckpt = seed_dir / "checkpoints"
    gb, rounds, spe = cfg.global_batch, budget.rounds, budget.steps_per_epoch
    order_epoch, order, aug = -1, None, None
    for r in range(resumed[0] if resumed else 0, rounds):
        t0 = time.time()
        trainable_p.train()
        if phase == "grade":
            net.eval()  # frozen encoder: BatchNorm statistics stay as trained
            net.grade_head.train()
        first, last = r * budget.eval_every, min((r + 1) * budget.eval_every, budget.steps)
        losses = []
        where = f"steps {first + 1}-{last}/{budget.steps}" if budget.per_step_schedule else f"epoch {r + 1}/{rounds}"
        bar = tqdm(range(first, last), desc=f"seed {seed} {phase} {where}", leave=False,
                   disable=not (cfg.progress and accelerator.is_main_process and progress_wanted()))
        for g in bar:
            epoch, s = divmod(g, spe)  # data order and augmentation are functions of (seed, epoch, item)
            if epoch != order_epoch:
                order = epoch_order(cfg, train.labels, seed, epoch)
                aug = epoch_params(seed, epoch, len(train), cfg.augment.rotate_deg, cfg.augment.shift, cfg.augment.zoom)
                order_epoch = epoch
            idx = order[s * gb:(s + 1) * gb][rank::world]
            x = to_input(train.images[idx], accelerator.device, channels_last)
            if cfg.augment.enabled:
                x = apply_affine(x, aug[idx])
            with accelerator.autocast():
                loss = step_fn(trainable_p, x, idx)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            if budget.per_step_schedule:
                sched.step()
            losses.append(float(loss.detach()))
            check_stop(accelerator, f"seed {seed} {phase} step {g + 1}/{budget.steps}" if budget.per_step_schedule
                       else f"seed {seed} {phase} epoch {epoch + 1}, step {s + 1}/{spe}")
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if not budget.per_step_schedule:
            sched.step()
        train_s = time.time() - t0
        # not in the grade phase (its encoder is frozen) nor on a frozen backbone (a pass of Inception per image)
        if cfg.precise_bn and phase == "view" and cfg.arch not in FROZEN_BACKBONES:
            precise_bn(accelerator, net, train.images, cfg.precise_bn, cfg.eval_batch, channels_last, seed, r)
        probs, grades = predict(accelerator, net, val.images, cfg.eval_batch, channels_last, with_grade)
        rec = {"phase": phase, "round": r + 1, "step": last, "epoch": budget.epochs_at(last),
               "loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
               "train_seconds": round(train_s, 3), "images_per_s": round(len(losses) * gb / max(train_s, 1e-9), 1),
               "seconds": round(time.time() - t0, 3)}
        if accelerator.is_main_process:
            m = score(val, probs, grades)
            rec.update({f"val_{k}": m.get(k) for k in ("macro_auprc", "macro_f1", "balanced_accuracy", "grade_mse")})
            improved = is_better(select, m.get(select), best)
            if improved:
                best, best_epoch = m.get(select), r + 1
                save_state(net, ckpt / "best.safetensors")
            if r + 1 == rounds:  # VGG16 is 0.5 GB: write "last" once, not every round
                save_state(net, ckpt / "last.safetensors")
            rec["best_epoch"] = best_epoch  # the round of the best validation score (an epoch without --steps)
            rec["best_step"] = min(best_epoch * budget.eval_every, budget.steps) if best_epoch > 0 else None
            append_jsonl(seed_dir / "stats.jsonl", rec)
            log_metrics(accelerator, rec, f"{seed_dir.name}/{phase}", last if budget.per_step_schedule else r + 1)
            history.append(rec)
            if cfg.progress:
                v = m.get(select)
                where = (f"step {last}/{budget.steps} (epoch {rec['epoch']})" if budget.per_step_schedule
                         else f"epoch {r + 1}")
                tqdm.write(f"seed {seed} {phase} {where}: loss {rec['loss']:.4f} "
                           f"val {select} {v if v is None else f'{v:.4f}'} ({rec['images_per_s']} img/s)")
            if cfg.checkpoint_every and ((r + 1) % cfg.checkpoint_every == 0 or r + 1 == rounds):
                save_epoch_state(seed_dir, phase, r + 1, net, opt, sched, best, best_epoch, history)
        accelerator.wait_for_everyone()
    accelerator.free_memory()  # drop accelerate's references to this phase's model and optimiser
    best_step = min(best_epoch * budget.eval_every, budget.steps) if best_epoch > 0 else None
    return {"best": best, "best_epoch": best_epoch, "best_step": best_step, "history": history,
            "optimizer_steps": budget.steps, "epochs": budget.epochs_at(budget.steps),
            "steps_per_epoch": spe, "eval_every": budget.eval_every}


def train_grade_head(accelerator, cfg, seed_dir: Path, train: ImageSet, val: ImageSet, seed: int) -> dict:
    """Transfer scheme, phase 2: reload the best view model, freeze its encoder, train the grade head."""
    net, _ = load_classifier(seed_dir, cfg.checkpoint, device=accelerator.device)
    for p in net.encoder_parameters():
        p.requires_grad_(False)
    for p in net.head.parameters():
        p.requires_grad_(False)
    quality = torch.tensor(train.quality, dtype=torch.float32)

    def grade_step(head, x, idx):
        with torch.no_grad():
            f = net.features(x)
        return q.grade_loss(head(f.float()).squeeze(1) * 10.0, quality[idx].to(x.device))

    opt = torch.optim.Adam(net.grade_head.parameters(), lr=cfg.quality.grade_lr)
    return run_epochs(accelerator, cfg, net, net.grade_head, opt, train, val, seed, seed_dir,
                      make_budget(cfg, len(train), cfg.quality.grade_epochs), grade_step, "grade", "grade_mse",
                      with_grade=True)


def train_seed(accelerator, cfg: ClassifierTrainConfig, train: ImageSet, evals: dict[str, ImageSet], seed: int,
               seed_dir: Path) -> dict:
    """Train one seed into `seed_dir` (model.json, checkpoints, stats) and score every evaluation set."""
    _seed_all(seed)
    grader = cfg.task == "quality"
    k = len(cfg.classes)
    model = build_classifier(cfg.arch, k, cfg.image_size, grade_head=grader)
    if grader:
        q.init_grade_head(model, train.quality)
    if cfg.channels_last and accelerator.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    info = model_info(cfg.arch, cfg.classes, cfg.image_size, grade_head=grader, feature_dim=model.feature_dim,
                      task=cfg.task, quality_scheme=cfg.quality.scheme if grader else None, seed=seed)
    if accelerator.is_main_process:
        write_json(seed_dir / "model.json", info)
    weights = None
    if cfg.balance == "weighted_loss":
        weights = torch.tensor(class_weights(train.labels, k), dtype=torch.float32, device=accelerator.device)
    labels = torch.as_tensor(train.labels)
    quality = torch.tensor(train.quality, dtype=torch.float32)
    val = next(iter(evals.values()))

    def view_step(m, x, idx):
        y = labels[idx].to(x.device)
        if grader and cfg.quality.scheme == "multitask":
            logits, grade = m(x, with_grade=True)
            return F.cross_entropy(logits.float(), y, weight=weights) + cfg.quality.grade_weight * q.grade_loss(
                grade, quality[idx].to(x.device))
        return view_loss(m(x), y, weights)  # + 0.4 × aux cross-entropy for inception_v3_aux

    transfer = grader and cfg.quality.scheme == "transfer"
    # Transfer: phase 1 has no trained grade head yet, so it selects on a view metric.
    view_select = "macro_auprc" if transfer and cfg.select_metric == "grade_mse" else cfg.select_metric
    if transfer:
        model.grade_head.requires_grad_(False)  # phase 1 trains the view head only (DDP rejects unused params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    result = run_epochs(accelerator, cfg, model, model, make_optimizer(cfg, trainable), train, val, seed,
                        seed_dir, make_budget(cfg, len(train)), view_step, "view", view_select,
                        with_grade=grader and not transfer)
    view = result
    if transfer:
        result = train_grade_head(accelerator, cfg, seed_dir, train, val, seed)
    accelerator.wait_for_everyone()
    chosen, _ = load_classifier(seed_dir, cfg.checkpoint, device=accelerator.device)
    metrics = evaluate_sets(accelerator, cfg, chosen, evals, seed_dir, train.present_classes())
    training = {"seed": seed, "images": len(train), "optimizer_steps": view["optimizer_steps"], "epochs": view["epochs"],
                "steps_per_epoch": view["steps_per_epoch"], "eval_every": view["eval_every"],
                "global_batch": cfg.global_batch, "budget": "steps" if cfg.steps else "epochs",
                "checkpoint": cfg.checkpoint, "best_step": result["best_step"],
                # the split that picked the scored checkpoint: findings must be computed on another one
                "selected_on": next(iter(evals)) if cfg.checkpoint == "best" else None,
                "precise_bn": cfg.precise_bn}
    if accelerator.is_main_process:
        write_json(seed_dir / "metrics.json", metrics)
        write_json(seed_dir / "training.json", training)
    return {"metrics": metrics, "best_epoch": result["best_epoch"], "training": training}


def evaluate_sets(accelerator, cfg: ClassifierTrainConfig, model: Classifier, evals: dict[str, ImageSet], seed_dir: Path,
                  train_classes: list[int]) -> dict:
    """Score the best model on every evaluation set; write predictions, confusion PNGs (main process)."""
    out = {}
    grader = model.grade_head is not None
    channels_last = cfg.channels_last and accelerator.device.type == "cuda"
    for name, s in evals.items():
        probs, grades = predict(accelerator, model, s.images, cfg.eval_batch, channels_last, grader,
                                cfg.progress and accelerator.is_main_process and progress_wanted(), desc=name)
        if not accelerator.is_main_process:
            continue
        m = score(s, probs, grades)
        m["subset_of_training_classes"] = set(s.present_classes()) < set(train_classes)
        out[name] = m
        write_predictions(predictions_frame(s.paths, s.labels, probs, s.classes, grades,
                                            s.quality if grader else None, s.video_ids), seed_dir / f"predictions_{name}.csv")
        subset = f" ({len(m['present_classes'])} of {len(s.classes)} views)" if m["subset_of_training_classes"] else ""
        save_confusion_png(m, seed_dir / f"confusion_{name}.png", f"{name}{subset}: macro AUPRC {m['macro_auprc']:.3f}")
        log_image_file(accelerator, f"{seed_dir.name}/confusion/{name}", seed_dir / f"confusion_{name}.png", cfg.steps or cfg.epochs)
        log_text(accelerator, f"{seed_dir.name}/confusion/{name}", confusion_markdown(m["classes"], m["confusion"]), cfg.steps or cfg.epochs)
        log_metrics(accelerator, {k: m.get(k) for k in ("macro_auprc", "macro_f1", "balanced_accuracy")},
                    f"{seed_dir.name}/{name}", cfg.steps or cfg.epochs)
    return out
