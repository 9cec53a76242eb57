"""Training config and loop for view classifiers and quality graders (accelerate, CPU or CUDA).

Images live in memory as uint8 (N×S×S); each step moves one global batch's share per process
to the device, augments it there, and steps the (DDP-wrapped) model. Batches, augmentation and
the class-balanced sampler are seeded per (seed, epoch) and item, so a run's data order does not
depend on the number of processes. Evaluation splits rows over processes and gathers the
probabilities; the main process scores, selects and saves.
"""

from __future__ import annotations

import math
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from classify import quality as q
from classify.augment import apply_affine, epoch_params
from classify.configs import ClassifierTrainConfig
from classify.datasets import balanced_indices, class_weights
from classify.metrics import (
    classification_metrics,
    grade_metrics,
    predictions_frame,
    save_confusion_png,
    write_predictions,
)
from classify.models import (
    Classifier,
    build_classifier,
    load_classifier,
    model_info,
    view_loss,
)
from classify.resume import check_stop, load_epoch_state, save_epoch_state
from gen.data.image_sets import ImageSet
from gen.io import append_jsonl, atomic_path, write_json
from gen.launcher import progress_wanted
from gen.tracking import (
    confusion_markdown,
    log_image_file,
    log_metrics,
    log_text,
)

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


def make_scheduler(cfg: ClassifierTrainConfig, opt: torch.optim.Optimizer, epochs: int):
    """Per-epoch StepLR, cosine annealing or constant learning rate."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def epoch_order(cfg: ClassifierTrainConfig, labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Item order for one epoch (a class-balanced draw with the sampler), padded to whole global batches."""
    rng = _rng("order", seed, epoch)
    n = len(labels)
    idx = balanced_indices(labels, n, rng) if cfg.balance == "sampler" else rng.permutation(n)
    steps = max(1, math.ceil(n / cfg.global_batch))
    return np.resize(idx, steps * cfg.global_batch)  # wrap around: every batch full (BatchNorm needs > 1)


def run_epochs(accelerator, cfg: ClassifierTrainConfig, net: Classifier, trainable: torch.nn.Module, opt, train: ImageSet,
               val: ImageSet, seed: int, seed_dir: Path, epochs: int, step_fn, phase: str, select: str,
               with_grade: bool) -> dict:
    """Epoch loop: `step_fn(trainable, x, idx) -> loss` steps `trainable` (the model or one head); each
    epoch scores `net` on val and keeps the best (by `select`) and last checkpoints."""
    sched = make_scheduler(cfg, opt, epochs)
    # after a kill: continue from the last epoch checkpoint (weights, moments, LR, RNG, selection state)
    resumed = load_epoch_state(seed_dir, phase, net, opt, sched, accelerator.is_main_process, tqdm.write) if cfg.resume else None
    net.to(accelerator.device)
    trainable_p, opt = accelerator.prepare(trainable, opt)
    channels_last = cfg.channels_last and accelerator.device.type == "cuda"
    world, rank = accelerator.num_processes, accelerator.process_index
    best, best_epoch, history = resumed[1:] if resumed else (None, -1, [])
    ckpt = seed_dir / "checkpoints"
    for epoch in range(resumed[0] if resumed else 0, epochs):
        t0 = time.time()
        trainable_p.train()
        if phase == "grade":
            net.eval()  # frozen encoder: BatchNorm statistics stay as trained
            net.grade_head.train()
        order = epoch_order(cfg, train.labels, seed, epoch)
        aug = epoch_params(seed, epoch, len(train), cfg.augment.rotate_deg, cfg.augment.shift, cfg.augment.zoom)
        losses = []
        steps = len(order) // cfg.global_batch
        bar = tqdm(range(steps), desc=f"seed {seed} {phase} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not (cfg.progress and accelerator.is_main_process and progress_wanted()))
        for s in bar:
            idx = order[s * cfg.global_batch:(s + 1) * cfg.global_batch][rank::world]
            x = to_input(train.images[idx], accelerator.device, channels_last)
            if cfg.augment.enabled:
                x = apply_affine(x, aug[idx])
            with accelerator.autocast():
                loss = step_fn(trainable_p, x, idx)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            losses.append(float(loss.detach()))
            check_stop(accelerator, f"seed {seed} {phase} epoch {epoch + 1}, step {s + 1}/{steps}")
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        sched.step()
        train_s = time.time() - t0
        probs, grades = predict(accelerator, net, val.images, cfg.eval_batch, channels_last, with_grade)
        rec = {"phase": phase, "epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
               "train_seconds": round(train_s, 3), "images_per_s": round(len(order) / train_s, 1),
               "seconds": round(time.time() - t0, 3)}
        if accelerator.is_main_process:
            m = score(val, probs, grades)
            rec.update({f"val_{k}": m.get(k) for k in ("macro_auprc", "macro_f1", "balanced_accuracy", "grade_mse")})
            improved = is_better(select, m.get(select), best)
            if improved:
                best, best_epoch = m.get(select), epoch + 1
                save_state(net, ckpt / "best.safetensors")
            if epoch + 1 == epochs:  # VGG16 is 0.5 GB: write "last" once, not every epoch
                save_state(net, ckpt / "last.safetensors")
            rec["best_epoch"] = best_epoch
            append_jsonl(seed_dir / "stats.jsonl", rec)
            log_metrics(accelerator, rec, f"{seed_dir.name}/{phase}", epoch + 1)
            history.append(rec)
            if cfg.progress:
                v = m.get(select)
                tqdm.write(f"seed {seed} {phase} epoch {epoch + 1}: loss {rec['loss']:.4f} "
                           f"val {select} {v if v is None else f'{v:.4f}'} ({rec['images_per_s']} img/s)")
            if cfg.checkpoint_every and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == epochs):
                save_epoch_state(seed_dir, phase, epoch + 1, net, opt, sched, best, best_epoch, history)
        accelerator.wait_for_everyone()
    accelerator.free_memory()  # drop accelerate's references to this phase's model and optimiser
    return {"best": best, "best_epoch": best_epoch, "history": history}


def train_grade_head(accelerator, cfg, seed_dir: Path, train: ImageSet, val: ImageSet, seed: int) -> dict:
    """Transfer scheme, phase 2: reload the best view model, freeze its encoder, train the grade head."""
    net, _ = load_classifier(seed_dir, "best", device=accelerator.device)
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
    return run_epochs(accelerator, cfg, net, net.grade_head, opt, train, val, seed, seed_dir, cfg.quality.grade_epochs,
                      grade_step, "grade", "grade_mse", with_grade=True)


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
                        seed_dir, cfg.epochs, view_step, "view", view_select,
                        with_grade=grader and not transfer)
    if transfer:
        result = train_grade_head(accelerator, cfg, seed_dir, train, val, seed)
    accelerator.wait_for_everyone()
    best, _ = load_classifier(seed_dir, "best", device=accelerator.device)
    metrics = evaluate_sets(accelerator, cfg, best, evals, seed_dir, train.present_classes())
    if accelerator.is_main_process:
        write_json(seed_dir / "metrics.json", metrics)
    return {"metrics": metrics, "best_epoch": result["best_epoch"]}


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
        log_image_file(accelerator, f"{seed_dir.name}/confusion/{name}", seed_dir / f"confusion_{name}.png", cfg.epochs)
        log_text(accelerator, f"{seed_dir.name}/confusion/{name}", confusion_markdown(m["classes"], m["confusion"]), cfg.epochs)
        log_metrics(accelerator, {k: m.get(k) for k in ("macro_auprc", "macro_f1", "balanced_accuracy")},
                    f"{seed_dir.name}/{name}", cfg.epochs)
    return out
