"""Training the class-conditioned diffusion model with accelerate: config, data order, the loop.

Randomness belongs to the step and the sample, not to the process: the global batch of step s
is a slice of seeded per-epoch permutations, each sample's timestep, noise and label dropout
come from a generator seeded with (seed, s, its position in the global batch), and dropout's
RNG is re-seeded every step. So a resumed run retraces the uninterrupted one, and the global
batch (and its gradient) is the same whatever the number of processes or accumulation steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from echosynth.gen.core.checkpoint import (
    CheckpointError,
    NonFiniteError,
    checkpoint_dir,
    clean_stale_temp,
    count_parameters,
    latest_intact,
    list_checkpoints,
    load_checkpoint,
    nonfinite_keys,
    prune_checkpoints,
    save_checkpoint,
    set_rng_states,
)
from echosynth.gen.core.config import ConfigError, to_dict
from echosynth.gen.core.hardware import Compiled, resolve_for, want_compile
from echosynth.gen.core.io import append_jsonl, read_json, read_jsonl, write_json, write_text
from echosynth.gen.core.launcher import Interrupted, progress_wanted, resume_command
from echosynth.gen.core.rundir import check_resumable, init_run_dir, start_run
from echosynth.gen.core.tracking import (
    accelerator_kwargs,
    finish_trackers,
    log_image_file,
    log_metrics,
    start_trackers,
)
from echosynth.gen.data.dataset import ManifestDataset
from echosynth.gen.data.manifest import ManifestError, read_manifest
from echosynth.gen.diffusion.ema import EMA
from echosynth.gen.diffusion.process import Diffusion
from echosynth.gen.diffusion.settings import RESUME_MAY_DIFFER, DiffusionConfig, TrainConfig  # noqa: F401
from echosynth.gen.diffusion.synthesis import image_seeds, plan_labels, sample_images, save_grid
from echosynth.gen.diffusion.timestep_sampler import (
    build_timestep_sampler,
    update_from_global_batch,
)
from echosynth.gen.diffusion.trained import LoadedRun
from echosynth.gen.diffusion.unet import build_model, preset_image_size

# DiffusionConfig, TrainConfig and RESUME_MAY_DIFFER live in echosynth.gen.diffusion.settings (torch-free); re-exported here.


def batch_plan(global_batch: int, batch_gpu: int, world: int) -> tuple[int, int]:
    """(per-process micro-batch, accumulation steps) with micro · accum · world = global_batch."""
    micro = batch_gpu or global_batch // world
    if micro < 1 or global_batch % (micro * world):
        raise ConfigError(f"global_batch {global_batch} is not divisible by batch_gpu {micro} × {world} processes; "
                          f"choose global_batch as a multiple of {micro * world}")
    return micro, global_batch // (micro * world)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def global_batch_indices(step: int, batch: int, n: int, seed: int) -> np.ndarray:
    """Dataset indices of step `step`'s global batch: positions [s·B, (s+1)·B) of the seeded epoch permutations."""
    out, pos = [], step * batch
    while len(out) < batch:
        epoch, off = divmod(pos, n)
        perm = np.random.default_rng(_seed(seed, epoch)).permutation(n)
        take = perm[off: off + batch - len(out)]
        out.extend(take.tolist())
        pos += len(take)
    return np.asarray(out, dtype=np.int64)


def per_sample_draws(seed: int, step: int, positions: np.ndarray, num_timesteps: int, shape: tuple[int, ...],
                     cfg_dropout: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, noise, drop-label mask) for samples at `positions` of step `step`'s global batch (CPU)."""
    ts, noises, drops = [], [], []
    for p in positions:
        g = torch.Generator().manual_seed(_seed(seed, step, int(p), 7))
        ts.append(torch.randint(0, num_timesteps, (1,), generator=g))
        noises.append(torch.randn((1, *shape), generator=g))
        drops.append(torch.rand((1,), generator=g) < cfg_dropout)
    return torch.cat(ts), torch.cat(noises), torch.cat(drops)


class IntervalStats:
    """Sums of loss terms (overall and per timestep quartile) over a logging interval on one process."""

    def __init__(self, num_timesteps: int, device: torch.device) -> None:
        self.T, self.device = num_timesteps, device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(4 + 8, dtype=torch.float64, device=self.device)  # n, loss, mse, vb, q-sums, q-counts
        self.grad_norm, self.steps, self.t0 = 0.0, 0, time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], t: torch.Tensor) -> None:
        loss = terms["loss"].detach().double()
        q = (t * 4 // self.T).clamp(max=3)
        s = self.sums
        s[0] += len(loss)
        s[1] += loss.sum()
        s[2] += terms["mse"].detach().double().sum()
        s[3] += terms["vb"].detach().double().sum()
        s[4:8] += torch.zeros(4, dtype=torch.float64, device=loss.device).index_add_(0, q, loss)
        s[8:12] += torch.bincount(q, minlength=4).double()

    def record(self, reduced: torch.Tensor, step: int, lr: float, global_batch: int) -> dict:
        s = reduced.cpu().tolist()
        dt = time.perf_counter() - self.t0
        rec = {"step": step, "loss": s[1] / s[0], "mse": s[2] / s[0], "vb": s[3] / s[0]}
        for i in range(4):
            rec[f"loss_q{i}"] = s[4 + i] / s[8 + i] if s[8 + i] else math.nan
        rec.update(grad_norm=self.grad_norm / max(self.steps, 1), lr=lr,
                   images_per_s=global_batch * self.steps / max(dt, 1e-9), time=time.time())
        return rec


# ----------------------------------------------------------------------------------------------
# Run directory and resume


def _latest_run(root: Path) -> Path | None:
    runs = sorted(p for p in root.glob("[0-9][0-9][0-9][0-9][0-9]-ddpm*") if list_checkpoints(p)) if root.is_dir() else []
    return runs[-1] if runs else None


def resolve_resume(cfg: TrainConfig) -> tuple[Path | None, Path | None]:
    """(run directory to continue, checkpoint directory to load) for `--resume`; (None, None) = fresh run."""
    if not cfg.resume:
        if cfg.run_dir and (Path(cfg.run_dir) / "config.json").exists() and not cfg.overwrite:
            raise FileExistsError(f"{cfg.run_dir} already holds a run; pass --resume latest to continue it or --overwrite to replace it")
        return None, None
    if cfg.resume == "latest":
        run = Path(cfg.run_dir) if cfg.run_dir else _latest_run(Path(cfg.out))
        if run is None:
            raise FileNotFoundError(f"--resume latest: no run with a checkpoint under {cfg.out}/ (give --run_dir or a path)")
        steps = list_checkpoints(run)
        if not steps:  # an explicit run dir without checkpoints yet: (re)start it
            return run, None
        return run, _newest_intact(run)
    p = Path(cfg.resume)
    if (p / "state.json").is_file():
        return p.parent.parent, p
    steps = list_checkpoints(p)
    if not steps:
        raise FileNotFoundError(f"--resume {p}: neither a checkpoint directory (with state.json) nor a run with checkpoints")
    return p, _newest_intact(p)


def _newest_intact(run: Path) -> Path:
    """The newest checkpoint of `run` whose files verify (a warning names each newer damaged file)."""
    step = latest_intact(run)
    if step is None:
        raise CheckpointError(f"{run}: every checkpoint under checkpoints/ is damaged (see the warnings above); "
                              "start again with --overwrite")
    return checkpoint_dir(run, step)


def check_resume_compatible(run: Path, config: dict, classes: list[str]) -> None:
    """Refuse to continue a run whose saved config or classes differ in anything that changes the maths."""
    check_resumable(run, config, RESUME_MAY_DIFFER)
    if (run / "classes.json").is_file() and read_json(run / "classes.json") != classes:
        raise ValueError(f"{run}: cannot resume, its classes {read_json(run / 'classes.json')} differ from the data's {classes}")


def load_training_data(cfg: TrainConfig):
    """The training ManifestDataset, with every requested class present."""
    m = read_manifest(cfg.data).filter(split=cfg.split or None, subset=cfg.subset or None)
    if len(m) == 0:
        raise ManifestError(f"{cfg.data}: no rows for split={cfg.split!r} subset={cfg.subset!r}")
    classes = list(cfg.classes) or m.classes()
    counts = m.df["view"].value_counts()
    empty = [c for c in classes if counts.get(c, 0) == 0]
    if empty:
        raise ManifestError(f"{cfg.data}: class(es) {empty} have no images (split={cfg.split!r} subset={cfg.subset!r}); "
                            f"present: {dict(counts)}. Drop them from --classes or use other data")
    extra = sorted(set(counts.index) - set(classes))
    if extra:
        raise ManifestError(f"{cfg.data}: views {extra} are not in --classes {classes}")
    return ManifestDataset(m, size=preset_image_size(cfg.model), classes=classes, preload=cfg.preload, verify=cfg.verify)


class StepBatches:
    """Batch sampler: this process's micro-batches of global steps start…steps−1, in order."""

    def __init__(self, start: int, steps: int, global_batch: int, micro: int, accum: int, world: int, rank: int,
                 n: int, seed: int) -> None:
        self.start, self.steps, self.B, self.micro, self.accum = start, steps, global_batch, micro, accum
        self.world, self.rank, self.n, self.seed = world, rank, n, seed

    def __iter__(self):
        for s in range(self.start, self.steps):
            g = global_batch_indices(s, self.B, self.n, self.seed)
            for k in range(self.accum):
                lo = (k * self.world + self.rank) * self.micro
                yield g[lo: lo + self.micro].tolist()

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum


# ----------------------------------------------------------------------------------------------
# Set-up: run directory, model state, data. The order of the steps in start_training fixes the RNG
# stream (model init, restored RNG states, the data loader's base seed): keep it.


class RunLog:
    """The run's log.txt (main process only), echoed to the screen unless asked not to."""

    def __init__(self, run: Path, main: bool) -> None:
        self.run, self.main = run, main

    def __call__(self, msg: str, screen: bool = True) -> None:
        if self.main:
            with open(self.run / "log.txt", "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
            if screen:
                tqdm.write(msg, file=sys.stdout)

    def last_good(self) -> str:
        """Where a run stopped by an error can continue from, for its message."""
        kept = list_checkpoints(self.run)
        return f"the last checkpoint is step {kept[-1]}" if kept else "no checkpoint was written yet"


def open_run_dir(cfg: TrainConfig, run: Path | None, config: dict, classes: list[str], world: int, main: bool) -> Path:
    """The run directory: made (or its config updated) by the main process, then shared with every process."""
    from accelerate.utils import broadcast_object_list

    prov = dict(seed=cfg.seed, world_size=world, inputs={"data": cfg.data})
    box = [None]
    if main:
        if run is None and cfg.run_dir:
            run = init_run_dir(cfg.run_dir, config, overwrite=cfg.overwrite, **prov)
        elif run is None:
            desc = cfg.desc or f"{cfg.model.preset}-{Path(cfg.data).stem}" + (f"-{cfg.subset}" if cfg.subset else "")
            run = start_run(cfg.out, "ddpm", desc, config, **prov)
        elif not (run / "config.json").is_file():
            run = init_run_dir(run, config, **prov)
        else:
            write_json(run / "config.json", config)  # steps or logging may have changed
        write_json(run / "classes.json", classes)
        box = [str(run)]
    broadcast_object_list(box)
    return Path(box[0])


def restore_state(cfg: TrainConfig, n_classes: int, ckpt: Path | None):
    """(model, EMA, optimiser, LR schedule, start step, checkpoint state): seeded fresh, or loaded from `ckpt` with its RNG states."""
    torch.manual_seed(cfg.seed)
    raw = build_model(cfg.model, n_classes, cfg.diffusion.learn_sigma)
    ema = EMA(raw, cfg.ema_decay, cfg.ema_warmup)
    opt = torch.optim.AdamW(raw.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    if ckpt is None:
        return raw, ema, opt, sched, 0, {}
    c = load_checkpoint(ckpt)
    raw.load_state_dict(c["model"])
    ema.load_state_dict(c["ema"])
    opt.load_state_dict(c["optimizer"])
    sched.load_state_dict(c["scheduler"])
    start = int(c["state"]["step"])
    set_rng_states(c["state"]["rng"])
    if start > cfg.steps:
        raise ValueError(f"{ckpt}: checkpoint is at step {start}, beyond --steps {cfg.steps}")
    return raw, ema, opt, sched, start, c["state"]


def trim_stats(run: Path, start: int) -> None:
    """Drop the stats.jsonl lines logged after the checkpoint the run continues from."""
    stats_path = run / "stats.jsonl"
    kept = [r for r in read_jsonl(stats_path) if r.get("step", 0) <= start] if stats_path.exists() else []
    write_text(stats_path, "".join(json.dumps(r) + "\n" for r in kept))


@dataclass
class Training:
    """What a training run carries from step to step (made by start_training)."""

    cfg: TrainConfig
    accelerator: Any
    run: Path
    log: RunLog
    classes: list[str]
    raw: torch.nn.Module  # the plain model: the EMA's source and the checkpoint's weights
    model: torch.nn.Module  # raw as accelerate prepared it (DDP, compiled): what the steps run
    ema: EMA
    opt: torch.optim.Optimizer
    sched: Any
    diffusion: Diffusion
    ts_sampler: Any  # None: uniform t from per_sample_draws
    start: int
    micro: int
    accum: int
    mp: str
    channels_last: bool
    world: int
    rank: int
    main: bool
    device: torch.device

    @property
    def T(self) -> int:
        return self.diffusion.num_timesteps


def start_training(cfg: TrainConfig) -> tuple[Training, Iterator]:
    """Check the data and the resume, start the processes, open the run directory, build or restore the model
    state, prepare it and open the data loader; return the run's Training and its batch iterator."""
    from accelerate import Accelerator

    ds = load_training_data(cfg)  # checks first: bad input fails before any process group starts
    classes, config = ds.classes, to_dict(cfg)
    run, ckpt = resolve_resume(cfg)
    if run is not None and (run / "config.json").is_file():
        check_resume_compatible(run, config, classes)
    cuda = torch.cuda.is_available()
    mp, mp_from = resolve_for(cfg.mixed_precision, "cuda" if cuda else "cpu")
    accelerator = Accelerator(cpu=not cuda, mixed_precision=mp, **accelerator_kwargs(cfg.log_with, cfg.out))
    if not cuda:
        torch.set_flush_denormal(True)  # denormal floats made CPU steps 5-20x slower in measurements
    world, rank, main, device = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process, accelerator.device
    micro, accum = batch_plan(cfg.global_batch, cfg.batch_gpu, world)
    run = open_run_dir(cfg, run, config, classes, world, main)
    log = RunLog(run, main)
    if main:
        for p in clean_stale_temp(run):
            log(f"removed {p}: left by an interrupted checkpoint write")

    raw, ema, opt, sched, start, state = restore_state(cfg, len(classes), ckpt)
    if main:
        trim_stats(run, start)
    channels_last = cfg.channels_last and cuda
    if channels_last:
        raw.to(memory_format=torch.channels_last)
    ema.model.to(device)
    model, opt = accelerator.prepare(raw, opt)
    use_compile, compile_why = want_compile(cfg.compile, device, (cfg.steps - start) * accum, training=True)
    if use_compile:  # falls back to eager with one warning; the warm-up (compiling) is logged with its time
        model = Compiled(model, log=log)
    diffusion = Diffusion(cfg.diffusion.num_timesteps, cfg.diffusion.schedule, cfg.diffusion.learn_sigma, cfg.diffusion.lambda_vlb)
    ts_sampler = build_timestep_sampler(cfg.timestep_sampler, diffusion.num_timesteps)
    if ts_sampler is not None and "timestep_sampler" in state:
        ts_sampler.load_state_dict(state["timestep_sampler"])
    start_trackers(accelerator, cfg.log_with, run, config, start)
    loader = DataLoader(ds, batch_sampler=StepBatches(start, cfg.steps, cfg.global_batch, micro, accum, world, rank, len(ds), cfg.seed),
                        num_workers=cfg.num_workers, pin_memory=cuda)
    batches = iter(loader)
    S = preset_image_size(cfg.model)
    log(f"run {run}: {len(ds)} images {ds.class_counts()}, preset {cfg.model.preset} ({count_parameters(raw) / 1e6:.2f} M params) "
        f"at {S}×{S}, {world} process(es) × {micro} × {accum} accumulation = global batch {cfg.global_batch}, "
        f"precision {mp} ({mp_from}), {compile_why}, device {device}" + (f", resumed from {ckpt} (step {start})" if ckpt else ""))
    return Training(cfg, accelerator, run, log, classes, raw, model, ema, opt, sched, diffusion, ts_sampler, start, micro,
                    accum, mp, channels_last, world, rank, main, device), batches


# ----------------------------------------------------------------------------------------------
# One step, the interval's log line, the preview grid, the checkpoint


def micro_step(tr: Training, step: int, k: int, batches: Iterator, stats: IntervalStats):
    """Forward and backward of micro-batch k of step `step` (gradients synchronised on the last one);
    returns its (positions in the global batch, t, L_t) for the loss-aware timestep sampler."""
    cfg, accelerator, device = tr.cfg, tr.accelerator, tr.device
    x, y = next(batches)
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    pos = np.arange((k * tr.world + tr.rank) * tr.micro, (k * tr.world + tr.rank + 1) * tr.micro)
    t, noise, drop = per_sample_draws(cfg.seed, step, pos, tr.T, tuple(x.shape[1:]), cfg.cfg_dropout)
    t, noise, drop = t.to(device), noise.to(device), drop.to(device)
    iw = None
    if tr.ts_sampler is not None:  # t from p_t by the sample's own uniform; weights 1/(T·p_t) keep the loss unbiased
        t_np, w_np = tr.ts_sampler.draw(cfg.seed, step, pos)
        t, iw = torch.from_numpy(t_np).to(device), torch.from_numpy(w_np).to(device, torch.float32)
    y = torch.where(drop, torch.full_like(y, len(tr.classes)), y)
    x_t = tr.diffusion.q_sample(x, t, noise)
    if tr.channels_last:
        x_t = x_t.contiguous(memory_format=torch.channels_last)
    sync = contextlib.nullcontext() if k == tr.accum - 1 else accelerator.no_sync(tr.model)
    with sync:
        with accelerator.autocast():
            out = tr.model(x_t, t, y)
        terms = tr.diffusion.losses(out.float(), x, noise, t)
        accelerator.backward((terms["loss"] if iw is None else terms["loss"] * iw).mean() / tr.accum)
    stats.add(terms, t)
    return pos, t, terms["vb"]


def train_step(tr: Training, step: int, batches: Iterator, stats: IntervalStats) -> float:
    """Optimiser step `step`: its micro-batches, the clipped gradient (stopping on nan/inf), AdamW, the LR schedule
    and the EMA; returns the learning rate the step was taken with."""
    cfg = tr.cfg
    torch.manual_seed(_seed(cfg.seed, step, tr.rank, 11))  # dropout RNG: a function of the step
    tr.model.train()
    seen: tuple[list, list, list] = ([], [], [])  # loss-aware: (positions, t, L_t) of this step
    for k in range(tr.accum):
        drawn = micro_step(tr, step, k, batches, stats)
        if tr.ts_sampler is not None:
            for part, value in zip(seen, drawn):
                part.append(value)
    if tr.ts_sampler is not None:
        update_from_global_batch(tr.ts_sampler, tr.accelerator, *seen)
    gn = tr.accelerator.clip_grad_norm_(tr.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    # nan/inf in any process's loss reaches the all-reduced gradient norm, so every process stops together
    # (fp16's loss scaler skips inf steps by design: there only the interval's loss is checked, in log_interval)
    if tr.mp != "fp16" and not math.isfinite(float(gn)):
        raise NonFiniteError(f"step {step + 1}: the gradient norm is {float(gn)} (the loss diverged); stopped before "
                             f"applying it, without writing a checkpoint; {tr.log.last_good()}. Lower --lr or --grad_clip")
    lr_used = tr.sched.get_last_lr()[0]  # the rate this step was taken with
    tr.opt.step()
    tr.sched.step()
    tr.opt.zero_grad(set_to_none=True)
    tr.ema.update(tr.raw, step)
    stats.grad_norm += float(gn)
    stats.steps += 1
    return lr_used


def log_interval(tr: Training, stats: IntervalStats, done: int, lr_used: float, bar, screen: bool) -> None:
    """The interval's mean losses over every process to stats.jsonl, the trackers and the bar or log line; stops on nan."""
    rec = stats.record(tr.accelerator.reduce(stats.sums.clone(), "sum"), done, lr_used, tr.cfg.global_batch)
    if not math.isfinite(rec["loss"]):
        raise NonFiniteError(f"step {done}: the mean loss of steps {done - stats.steps + 1}-{done} is {rec['loss']}; "
                             f"stopped without writing a checkpoint; {tr.log.last_good()}. Lower --lr or --grad_clip")
    if tr.main:
        append_jsonl(tr.run / "stats.jsonl", rec)
        log_metrics(tr.accelerator, rec, "train", done)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.1f}")
        tr.log(f"step {done}: loss {rec['loss']:.4f} mse {rec['mse']:.4f} vb {rec['vb']:.4f} "
               f"grad {rec['grad_norm']:.3f} lr {rec['lr']:.2e} {rec['images_per_s']:.1f} img/s",
               screen=screen)  # log.txt always; the bar shows the loss on a terminal
    stats.reset()


def preview(tr: Training, done: int) -> None:
    """samples/step-NNNNNNN.png: a grid of EMA samples, sample_per_class of each class from fixed seeds."""
    cfg = tr.cfg
    labels = plan_labels(tr.classes, cfg.sample_per_class)
    loaded = LoadedRun(tr.ema.model, tr.diffusion, tr.classes, preset_image_size(cfg.model), cfg, done, tr.run, "ema")
    imgs = sample_images(loaded, labels, image_seeds(cfg.seed, range(len(labels))), steps=min(cfg.sampling_steps, tr.T),
                         batch_size=max(len(labels), 1), device=tr.device, precision=tr.mp)
    save_grid(tr.run / "samples" / f"step-{done:07d}.png", imgs, cfg.sample_per_class)
    log_image_file(tr.accelerator, "samples", tr.run / "samples" / f"step-{done:07d}.png", done)


def stop_requested(tr: Training, stop) -> bool:
    """Whether a signal asked the run to stop; with several processes, whether any of them got one."""
    if stop is None:
        return False
    if tr.world == 1:
        return bool(stop.signum)
    # a signal reaches ranks at different steps: agree first
    return float(tr.accelerator.reduce(torch.tensor([float(bool(stop.signum))], device=tr.device), "sum")) > 0


def checkpoint(tr: Training, done: int) -> None:
    """Checkpoint step `done` (main process), unless a weight is nan/inf; prune old ones; every process waits for it."""
    bad = nonfinite_keys(tr.ema.state_dict()) + nonfinite_keys(tr.raw.state_dict())
    if bad:  # the same on every process: the weights are replicas
        raise NonFiniteError(f"step {done}: the model or EMA weights hold nan/inf ({', '.join(bad[:3])}); "
                             f"checkpoint step {done} not written; {tr.log.last_good()}. Check --ema_decay and --lr")
    if tr.main:
        cfg = tr.cfg
        save_checkpoint(tr.run, done, model=tr.raw.state_dict(), ema=tr.ema.state_dict(), optimizer=tr.opt.state_dict(),
                        scheduler=tr.sched.state_dict(),
                        state={"world_size": tr.world, "global_batch": cfg.global_batch, "images_seen": done * cfg.global_batch,
                               **({"timestep_sampler": tr.ts_sampler.state_dict()} if tr.ts_sampler is not None else {})})
        kept = prune_checkpoints(tr.run, cfg.keep_last, cfg.keep_every)
        tr.log(f"checkpoint step {done} (kept: {kept})")
    tr.accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, stop=None) -> Path:
    """Train (or resume) a diffusion run as configured; return its run directory. Call under `accelerate launch`.

    `stop` (a echosynth.gen.core.launcher.GracefulStop) is polled after every step: on a signal the step is finished,
    checkpointed, and echosynth.gen.core.launcher.Interrupted is raised with the command that continues the run.
    """
    tr, batches = start_training(cfg)
    stats = IntervalStats(tr.T, tr.device)
    bars = tr.main and progress_wanted()  # a person watches: draw the bar (with the loss) instead of loss lines
    bar = tqdm(total=cfg.steps, initial=tr.start, unit="step", disable=not bars, desc="train")
    for step in range(tr.start, cfg.steps):
        lr_used = train_step(tr, step, batches, stats)
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            log_interval(tr, stats, done, lr_used, bar, screen=not bars)
        if tr.main and cfg.sample_per_class and ((cfg.sample_every and done % cfg.sample_every == 0) or done == cfg.steps):
            preview(tr, done)
        stopping = stop_requested(tr, stop)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or stopping:
            checkpoint(tr, done)
        if stopping:
            bar.close()
            name = {2: "SIGINT", 15: "SIGTERM"}.get(stop.signum, "a signal")
            raise Interrupted(f"{name}: stopped after step {done}, checkpoint {tr.run}/checkpoints/step-{done:07d} written; "
                              f"continue with: {resume_command({'--run_dir': str(tr.run), '--resume': 'latest'})}",
                              stop.exit_code or 143)
    bar.close()
    finish_trackers(tr.accelerator)
    tr.log(f"done: {cfg.steps} steps in {tr.run}")
    return tr.run
