"""Class-conditional sampling with per-image seeds (diffusers schedulers), sample grids and sample directories.

Every image i has its own seed (from the global seed and i); its initial noise and every step's
noise come from a generator seeded with it, so an image does not depend on the batch it is in
or on how many processes share the work.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from echosynth.gen.core.config import current_keys, to_dict
from echosynth.gen.core.hardware import Compiled, autocast, resolve_for, want_compile
from echosynth.gen.core.io import (
    check_writable_output,
    read_json,
    save_npz,
    save_png,
    sha1_bytes,
    write_bytes,
    write_json,
)
from echosynth.gen.core.launcher import progress_wanted
from echosynth.gen.core.rundir import provenance
from echosynth.gen.data.dataset import to_uint8
from echosynth.gen.data.manifest import write_manifest
from echosynth.gen.diffusion.process import make_noise_scheduler
from echosynth.gen.diffusion.settings import SAMPLERS, SampleConfig, parse_counts  # noqa: F401
from echosynth.gen.diffusion.trained import load_run


def image_seeds(global_seed: int, indices: Sequence[int]) -> np.ndarray:
    """Seed of each image: 63 bits of SeedSequence([global_seed, index]) (independent across seeds and indices)."""
    return np.array([int(np.random.SeedSequence([global_seed, int(i)]).generate_state(1, np.uint64)[0] >> np.uint64(1))
                     for i in indices], dtype=np.int64)


def plan_labels(classes: Sequence[str], per_class: int = 0, counts: dict[str, int] | None = None) -> np.ndarray:
    """Labels in class order: `per_class` of each class, or explicit `counts` {class: n}."""
    if counts:
        unknown = sorted(set(counts) - set(classes))
        if unknown:
            raise ValueError(f"--counts names {unknown}, not classes of this run ({', '.join(classes)})")
        return np.concatenate([np.full(counts.get(c, 0), i, dtype=np.int64) for i, c in enumerate(classes)])
    if per_class < 1:
        raise ValueError("give --per_class N (>= 1) or --counts CLASS=N,...")
    return np.repeat(np.arange(len(classes), dtype=np.int64), per_class)


@torch.no_grad()
def guided_output(model, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, guidance: float) -> torch.Tensor:
    """Model output with classifier-free guidance on ε only: ε = ε_∅ + w(ε_c − ε_∅); the variance half is the conditional one."""
    if guidance == 1.0:
        return model(x, t, labels).float()
    null = torch.full_like(labels, model.null_class)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).float()
    cond, uncond = out.chunk(2)
    C = x.shape[1]
    eps = uncond[:, :C] + guidance * (cond[:, :C] - uncond[:, :C])
    return torch.cat([eps, cond[:, C:]], dim=1)


def check_timesteps(diffusion, sampler: str, spacing: str, steps: int) -> None:
    """Refuse a chain that visits a timestep twice: diffusers' multistep solvers space `steps + 1` points
    over 0…T−1 and drop the last, so with `linspace` and steps ≥ T two steps share a timestep, the
    step size h is 0 and the solver's update divides by it (every image comes out black)."""
    sched = make_noise_scheduler(diffusion, sampler, spacing)
    sched.set_timesteps(steps)
    ts = sched.timesteps.tolist()
    if len(set(ts)) < len(ts):
        raise ValueError(f"sampler {sampler} with {spacing} spacing repeats timesteps at {steps} sampling steps over "
                         f"T = {diffusion.num_timesteps}: use at most {diffusion.num_timesteps - 1} sampling steps, "
                         "or --spacing trailing")


@torch.no_grad()
def sample_images(loaded_run, labels, seeds, steps: int = 100, sampler: str = "ddpm", guidance: float = 1.0,
                  batch_size: int = 64, device: str | torch.device = "cpu", eta: float = 0.0,
                  spacing: str = "linspace", progress: bool = False,
                  on_step: Callable[[float], None] | None = None, precision: str = "no") -> np.ndarray:
    """Sample one image per (label, seed) with a `steps`-evaluation chain; uint8 (N, H, W).

    `ddpm` is the ancestral sampler with learned variances over a respaced chain; `ddim`,
    `dpm++2m`, `dpm++2m-sde` and `unipc` see only ε. The model runs under `precision`'s autocast (a resolved
    value: no, bf16 or fp16); its output and the solver's arithmetic are float32.
    `on_step(images)` is called after every denoising step with the images' share of progress
    (the batch size / steps), so a caller's bar moves per step, not per batch."""
    labels, seeds = np.asarray(labels, dtype=np.int64), np.asarray(seeds, dtype=np.int64)
    if labels.shape != seeds.shape:
        raise ValueError(f"labels {labels.shape} and seeds {seeds.shape} must have the same length")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use {' or '.join(SAMPLERS)}")
    model, diffusion = loaded_run.model, loaded_run.diffusion
    if guidance != 1.0 and not getattr(loaded_run.config, "cfg_dropout", 0.0):
        raise ValueError(f"{loaded_run.run_dir}: guidance {guidance} needs a model trained with cfg_dropout > 0")
    check_timesteps(diffusion, sampler, spacing, steps)
    device = torch.device(device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals slow CPU convolutions many-fold
    S, C = loaded_run.image_size, model.in_channels
    out = np.empty((len(labels), S, S), dtype=np.uint8)
    bar = tqdm(total=len(labels), unit="img", disable=not progress, desc="sampling")
    for lo in range(0, len(labels), batch_size):
        hi = min(lo + batch_size, len(labels))
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[lo:hi]]
        x = torch.cat([torch.randn((1, C, S, S), generator=g) for g in gens]).to(device)
        y = torch.as_tensor(labels[lo:hi], device=device)
        sched = make_noise_scheduler(diffusion, sampler, spacing)  # multistep solvers keep state: a fresh one per batch
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            tt = t.to(device).expand(hi - lo)
            with autocast(device, precision):
                mo = guided_output(model, x, tt, y, guidance)
            if sampler == "ddpm":
                x = sched.step(mo, t, x, generator=gens).prev_sample
            elif sampler == "ddim":
                x = sched.step(mo[:, :C], t, x, eta=eta, generator=gens).prev_sample
            elif sampler == "dpm++2m-sde":  # ε only; per-image noise from each image's generator
                x = sched.step(mo[:, :C].contiguous(), t, x, generator=gens).prev_sample
            else:  # deterministic ODE solvers: ε only (see echosynth.gen.diffusion.process.make_noise_scheduler)
                x = sched.step(mo[:, :C].contiguous(), t, x).prev_sample
            if on_step is not None:
                on_step((hi - lo) / len(sched.timesteps))
        out[lo:hi] = to_uint8(x)
        bar.update(hi - lo)
    bar.close()
    return out


def make_grid(images: np.ndarray, ncol: int) -> np.ndarray:
    """Tile uint8 (N, H, W) images into one (rows·H, ncol·W) image, row-major, 1-px gaps."""
    n, h, w = images.shape
    rows = -(-n // ncol)
    grid = np.zeros((rows * (h + 1) - 1, ncol * (w + 1) - 1), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        grid[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = im
    return grid


# ----------------------------------------------------------------------------------------------
# Sample directories: shards per process, merged by rank 0


def shard_path(out: Path, lo: int, hi: int) -> Path:
    """DIR/shards/<lo>-<hi>.npz."""
    return out / "shards" / f"{lo:07d}-{hi:07d}.npz"


def png_relpath(cls: str, index: int) -> str:
    """images/<class>/<index>.png (index zero-padded to 6 digits)."""
    return f"images/{cls}/{index:06d}.png"


def write_shard(out: Path, lo: int, images: np.ndarray, labels: np.ndarray, seeds: np.ndarray, classes: Sequence[str]) -> None:
    """PNGs of images lo… plus the shard .npz (written last, so it marks the shard complete)."""
    sha1s = []
    for k, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        write_bytes(out / png_relpath(classes[labels[k]], lo + k), buf.getvalue())
        sha1s.append(sha1_bytes(buf.getvalue()))
    save_npz(shard_path(out, lo, lo + len(images)), images=images, labels=labels, seeds=seeds, sha1=np.array(sha1s))


def merge_shards(out: Path, n: int, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Concatenate DIR/shards/*.npz into samples.npz and manifest.csv (data-layer format, source 'synthetic')."""
    parts = sorted((out / "shards").glob("*.npz"))
    arrays: dict[str, list] = {"images": [], "labels": [], "seeds": [], "sha1": []}
    for p in parts:
        with np.load(p) as z:
            for k in arrays:
                arrays[k].append(z[k])
    merged = {k: np.concatenate(v) for k, v in arrays.items()}
    if len(merged["labels"]) != n:
        raise RuntimeError(f"{out}/shards: found {len(merged['labels'])} images, expected {n}")
    classes_arr = np.array(list(classes))
    save_npz(out / "samples.npz", images=merged["images"], labels=merged["labels"], seeds=merged["seeds"], classes=classes_arr)
    idx = np.arange(n)
    df = pd.DataFrame({
        "path": [png_relpath(classes[lab], i) for i, lab in zip(idx, merged["labels"])],
        "view": classes_arr[merged["labels"]], "source": "synthetic",
        "patient_id": [f"synthetic-{i}" for i in idx], "split": "", "frame": "", "quality": "",
        "sha1": merged["sha1"], "seed": merged["seeds"],
    })
    write_manifest(df, out / "manifest.csv")
    return merged


def load_samples(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read DIR/samples.npz (or the file itself) with an error naming it."""
    p = Path(path)
    p = p / "samples.npz" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no samples.npz (run gen/sample.py --out DIR first)")
    with np.load(p) as z:
        return {k: z[k] for k in z.files}


def sample_meta(out: Path) -> dict | None:
    """DIR/sample.json, or None."""
    return read_json(out / "sample.json") if (out / "sample.json").is_file() else None


def save_grid(path: str | os.PathLike, images: np.ndarray, ncol: int) -> None:
    """Write a grid PNG of uint8 images."""
    save_png(path, make_grid(images, ncol))


# ----------------------------------------------------------------------------------------------
# gen/sample.py's config and driver

# SampleConfig and parse_counts live in echosynth.gen.diffusion.settings (torch-free); re-exported here.


def sample_to_dir(cfg: SampleConfig) -> Path:
    """Sample as configured into cfg.out, split over the accelerate processes; resumable by shard."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    device = state.device
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    loaded = load_run(cfg.run, cfg.weights, cfg.step or None, device=device)
    if device.type == "cuda":
        loaded.model.to(memory_format=torch.channels_last)
    labels = plan_labels(loaded.classes, cfg.per_class, parse_counts(cfg.counts))
    n = len(labels)
    if n == 0:
        raise ValueError("nothing to sample: every count is 0")
    mp, mp_from = resolve_for(cfg.mixed_precision, device)
    evals = -(-n // state.num_processes) * cfg.sampling_steps * (2 if cfg.guidance != 1.0 else 1) // max(cfg.batch_size, 1)
    use_compile, why = want_compile(cfg.compile, device, evals)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if state.is_main_process else (lambda msg: None)
    say(f"sampling {n} images: {cfg.sampler}, {cfg.sampling_steps} steps, precision {mp} ({mp_from}), {why}, device {device}")
    if use_compile:
        loaded.model = Compiled(loaded.model, log=say)
    seeds = image_seeds(cfg.seed, range(n))
    out = Path(cfg.out)
    request = {k: v for k, v in to_dict(cfg).items() if k not in ("overwrite", "out")}
    request.update(run=str(Path(cfg.run).resolve()), step=loaded.step)
    old = sample_meta(out)
    if old is not None and not cfg.overwrite:
        if current_keys(SampleConfig, old.get("request") or {}) != request:  # names of before a rename too
            raise FileExistsError(f"{out} holds samples of another request ({out / 'sample.json'}); "
                                  "pass --overwrite to replace them or choose another --out")
        if old.get("complete"):
            raise FileExistsError(f"{out} is already complete; pass --overwrite to sample again")
    elif old is None:
        check_writable_output(out, cfg.overwrite)
    state.wait_for_everyone()
    if state.is_main_process:
        if cfg.overwrite and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"request": request, "complete": False, "run": request["run"], "weights": cfg.weights,
                "checkpoint_step": loaded.step, "sampler": cfg.sampler, "sampling_steps": cfg.sampling_steps, "guidance": cfg.guidance,
                "precision": mp, "precision_from": mp_from, "compile": use_compile,
                "classes": loaded.classes, "n": n, "counts": {c: int((labels == i).sum()) for i, c in enumerate(loaded.classes)},
                "provenance": provenance(seed=cfg.seed, world_size=state.num_processes, parents=[cfg.run])}
        write_json(out / "sample.json", meta)
    state.wait_for_everyone()
    shards = [(lo, min(lo + cfg.batch_size, n)) for lo in range(0, n, cfg.batch_size)]
    with state.split_between_processes(shards) as mine:
        todo = [s for s in mine if not shard_path(out, *s).exists()]
        # Moves per denoising step (fractions of a batch), so a long chain does not look stalled.
        bar = tqdm(total=sum(hi - lo for lo, hi in todo), desc=f"sampling (rank {state.process_index})",
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} img [{elapsed}<{remaining}]",
                   disable=not (state.is_main_process and progress_wanted()))
        for lo, hi in todo:
            imgs = sample_images(loaded, labels[lo:hi], seeds[lo:hi], cfg.sampling_steps, cfg.sampler, cfg.guidance,
                                 cfg.batch_size, device, eta=cfg.eta, spacing=cfg.spacing, on_step=bar.update,
                                 precision=mp)
            write_shard(out, lo, imgs, labels[lo:hi], seeds[lo:hi], loaded.classes)
        bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        merge_shards(out, n, loaded.classes)
        meta = read_json(out / "sample.json")
        meta["complete"] = True
        write_json(out / "sample.json", meta)
        shutil.rmtree(out / "shards", ignore_errors=True)
    state.wait_for_everyone()
    return out
