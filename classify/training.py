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

from classify import quality as q
from classify.augment import apply_affine, epoch_params
from classify.datasets import ImageSet, balanced_indices, class_weights
from classify.metrics import (
    classification_metrics,
    grade_metrics,
    predictions_frame,
    save_confusion_png,
    write_predictions,
)
from classify.models import (
    FROZEN_BACKBONES,
    MODELS,
    Classifier,
    build_classifier,
    load_classifier,
    min_image_size,
    model_info,
    view_loss,
)
from gen.config import ConfigError, field
from gen.data.manifest import VIEWS
from gen.io import append_jsonl, atomic_path, write_json
from gen.tracking import (
    LOG_WITH_HELP,
    TRACKERS,
    check_tracker,
    confusion_markdown,
    log_image_file,
    log_metrics,
    log_text,
)

LOWER_IS_BETTER = {"grade_mse", "grade_mae", "val_loss"}


@dataclasses.dataclass
class AugmentConfig:
    """Random affine augmentation (no flips: they turn one view into another)."""

    enabled: bool = field(False, help="augment training images (off in the thesis recipe)")
    rotate_deg: float = field(10.0, min=0, max=180, help="rotation range ± degrees")
    shift: float = field(0.1, min=0, max=0.5, help="shift range ± fraction of the size")
    zoom: float = field(0.08, min=0, max=0.5, help="zoom range ± fraction")


@dataclasses.dataclass
class QualityConfig:
    """Image-quality grading (CACTUS): a 0–10 grade head beside the view head."""

    scheme: str = field("transfer", choices=("transfer", "multitask"),
                        help="transfer: view head, then freeze encoder and train the grade head; multitask: joint loss")
    grade_epochs: int = field(10, min=1, help="transfer: epochs of grade-head training on the frozen encoder")
    grade_lr: float = field(1e-3, min=0, help="transfer: learning rate of the grade head (Adam)")
    grade_weight: float = field(1.0, min=0, help="multitask: weight of the grade MSE (on grade/10) beside cross-entropy")


@dataclasses.dataclass
class ClassifierTrainConfig:
    """classify/train.py: defaults are the thesis recipe (VGG16 from scratch, SGD, StepLR, 25 epochs)."""

    train: str = field("", help="training-set SPEC (see --help epilog), e.g. real:split/train_1000.csv")
    val: str = field("", help="validation manifest (model selection), [name=]PATH")
    test: list[str] = field(default_factory=list, help="evaluation manifests, comma-separated [name=]PATH")
    task: str = field("view", choices=("view", "quality"), help="view classifier or view + grade (CACTUS)")
    classes: list[str] = field(default_factory=lambda: list(VIEWS), help="class list, fixed across sets")
    allow_empty_classes: bool = field(False, help="train although a class has no training images")
    arch: str = field("vgg16", choices=tuple(MODELS), help="architecture")
    image_size: int = field(112, min=32, help="images are resized to image_size × image_size")
    epochs: int = field(25, min=1, help="training epochs")
    global_batch: int = field(32, min=1, help="images per optimiser step, over all processes")
    optimizer: str = field("sgd", choices=("sgd", "adam"), help="optimiser")
    lr: float = field(1e-3, min=0, help="learning rate")
    momentum: float = field(0.9, min=0, max=1, help="SGD momentum")
    weight_decay: float = field(0.0, min=0, help="weight decay")
    schedule: str = field("step", choices=("step", "cosine", "none"), help="learning-rate schedule (per epoch)")
    step_size: int = field(5, min=1, help="StepLR: epochs between decays")
    gamma: float = field(0.1, min=0, max=1, help="StepLR: decay factor")
    balance: str = field("none", choices=("none", "weighted_loss", "sampler"),
                         help="class balance: inverse-frequency loss weights or a class-balanced sampler")
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    select_metric: str = field("macro_auprc", choices=("macro_auprc", "macro_f1", "balanced_accuracy", "grade_mse"),
                               help="validation metric that picks the best checkpoint")
    seeds: list[int] = field(default_factory=lambda: [0], help="training seeds (repeats), e.g. 0,1,2")
    data_seed: int = field(0, help="seed of mixed/upsampled/SMOTE draws (fixed across training seeds)")
    out: str = field("runs", help="run root: a numbered run directory is made under it")
    run_dir: str | None = field(None, help="explicit run directory (instead of a numbered one under --out)")
    overwrite: bool = field(False, help="replace an existing --run_dir")
    resume: str = field("", help="'latest' (the --run_dir, else the newest classify run under --out) or a run directory: "
                                 "finished seeds are kept, the others continue from their last epoch checkpoint")
    checkpoint_every: int = field(1, min=0, help="resume checkpoint (model, optimiser, RNG) every N epochs (0 = none)")
    description: str = field("", help="run directory description (default: arch and training kind)")
    mixed_precision: str = field("no", choices=("no", "fp16", "bf16"), help="CUDA mixed precision")
    channels_last: bool = field(True, help="channels_last memory format on CUDA")
    eval_batch: int = field(256, min=1, help="images per evaluation batch per process")
    workers: int = field(4, min=1, help="image-decoding threads")
    threads: int = field(0, min=0, help="torch CPU threads per process (0: torch's default); 1 is fastest on a busy machine")
    progress: bool = field(True, help="progress bars")
    verify: bool = field(False, help="check every image's SHA-1 against its manifest first (names changed files by CSV line)")
    log_with: str = field("", choices=TRACKERS, help=LOG_WITH_HELP)

    def validate(self) -> None:
        """Cross-field checks with actionable messages."""
        if not self.train:
            raise ConfigError("--train is required: a training-set SPEC such as real:split/train.csv")
        if not self.val:
            raise ConfigError("--val is required: the validation manifest used for model selection")
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ConfigError(f"classes must be at least 2 distinct names, got {self.classes}")
        if self.select_metric == "grade_mse" and self.task != "quality":
            raise ConfigError("select_metric grade_mse needs --task quality")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {self.seeds}")
        if self.image_size < min_image_size(self.arch):
            raise ConfigError(f"image_size {self.image_size} is too small for {self.arch}: use at least "
                              f"{min_image_size(self.arch)} px (e.g. --image_size 112)")
        check_tracker(self.log_with)
        if self.arch in FROZEN_BACKBONES and self.augment.enabled:
            raise ConfigError(f"arch {self.arch}: frozen features are cached per image, and augmentation makes every "
                              "epoch's images new; train it without --augment.enabled")


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
    from classify.resume import check_stop, load_epoch_state, save_epoch_state

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
                   disable=not (cfg.progress and accelerator.is_main_process))
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
                                cfg.progress and accelerator.is_main_process, desc=name)
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
