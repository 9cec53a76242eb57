"""The configs of gen/train.py and gen/sample.py: torch-free, so `--help` and config errors answer in about a second.

echosynth.gen.diffusion.loop and echosynth.gen.diffusion.synthesis re-export them; the scripts import torch only after parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from echosynth.gen.core.config import ConfigError
from echosynth.gen.core.config import field as cfg_field
from echosynth.gen.core.tracking import LOG_WITH_HELP, TRACKERS, check_tracker
from echosynth.gen.diffusion.presets import ModelConfig
from echosynth.gen.diffusion.timestep_sampler import TIMESTEP_SAMPLERS

# Names of echosynth.gen.diffusion.process.BETA_SCHEDULES and of echosynth.gen.diffusion.synthesis's samplers, kept here without torch
# (tests/test_config.py checks they agree).
SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "unipc")
# diffusers' multistep solvers space steps + 1 points over 0…T−1, so with linspace or leading spacing a
# chain of T steps repeats a timestep (echosynth.gen.diffusion.synthesis.check_timesteps refuses it;
# tests/test_gen_sample.py checks this list against it)
MULTISTEP_SAMPLERS = ("dpm++2m", "dpm++2m-sde", "unipc")
PRECISIONS = ("auto", "no", "bf16", "fp16")
PRECISION_HELP = "auto = bf16 on CUDA with bf16 and on CPUs with AMX/AVX512-BF16, fp32 elsewhere; an accelerate launch flag wins over auto"
COMPILE_CHOICES = ("auto", True, False)

RESUME_MAY_DIFFER = {"verify", "steps", "resume", "overwrite", "checkpoint_every", "keep_last", "keep_every", "log_every",
                     "sample_every", "sample_per_class", "sampling_steps", "sample_steps", "num_workers", "compile", "batch_gpu",
                     "out", "run_dir", "desc", "preload", "mixed_precision", "channels_last", "log_with"}


@dataclass
class DiffusionConfig:
    """The diffusion process (thesis §2.3): schedule, T, learned σ and the VLB weight."""

    num_timesteps: int = cfg_field(1000, help="diffusion steps T", min=2, max=100000)
    schedule: str = cfg_field("linear", help="noise schedule", choices=SCHEDULES)
    learn_sigma: bool = cfg_field(True, help="learn the variance (hybrid loss); false: L_simple, fixed σ")
    lambda_vlb: float = cfg_field(0.001, help="λ of L_hybrid = L_simple + λ·L_vlb", min=0.0)


@dataclass
class TrainConfig:
    """`gen/train.py`: data, run directory, model, diffusion, optimisation, checkpoints, logging."""

    data: str = cfg_field("", help="training manifest CSV (all its rows are used unless --split/--subset)")
    subset: str = cfg_field("", help="nested training subset size to train on (e.g. 1000), empty = all rows")
    split: str = cfg_field("", help="only rows of this split (e.g. train), empty = all rows")
    classes: list[str] = cfg_field(default_factory=list, help="class names in label order (default: views present); each needs images")
    out: str = cfg_field("runs", help="root for numbered run directories")
    run_dir: str = cfg_field("", help="explicit run directory instead of a numbered one under --out")
    desc: str = cfg_field("", help="short description for the run directory name")
    resume: str = cfg_field("", help="'latest' or a run/checkpoint directory to continue")
    overwrite: bool = cfg_field(False, help="replace an existing --run_dir")
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    steps: int = cfg_field(10000, help="total optimiser steps", min=1)
    global_batch: int = cfg_field(16, help="images per optimiser step over all processes", min=1)
    batch_gpu: int = cfg_field(0, help="images per process per forward (0 = global_batch / processes); smaller -> accumulation", min=0)
    lr: float = cfg_field(1e-4, help="AdamW learning rate", min=0.0)
    weight_decay: float = cfg_field(0.0, help="AdamW weight decay", min=0.0)
    warmup_steps: int = cfg_field(0, help="linear LR warm-up steps", min=0)
    grad_clip: float = cfg_field(1.0, help="clip the gradient norm to this (0 = no clipping)", min=0.0)
    ema_decay: float = cfg_field(0.9999, help="EMA decay", min=0.0, max=1.0)
    ema_warmup: bool = cfg_field(True, help="EMA decay min(decay, (1+n)/(10+n)) early on")
    cfg_dropout: float = cfg_field(0.0, help="label dropout probability for classifier-free guidance", min=0.0, max=1.0)
    mixed_precision: str = cfg_field("auto", help=PRECISION_HELP, choices=PRECISIONS)
    channels_last: bool = cfg_field(True, help="channels_last memory format on CUDA")
    compile: bool | str = cfg_field("auto", choices=COMPILE_CHOICES,
                                    help="torch.compile the UNet; auto = on CUDA, and on CPU for runs long enough to amortise it")
    seed: int = cfg_field(0, help="seed of data order, noise, timesteps, init")
    timestep_sampler: str = cfg_field("uniform", choices=TIMESTEP_SAMPLERS,
                                      help="t per sample: uniform, or loss-aware importance sampling of L_vlb (improved DDPM §3.3)")
    checkpoint_every: int = cfg_field(1000, help="checkpoint every N steps (and at the end)", min=1)
    keep_last: int = cfg_field(2, help="keep the newest K checkpoints", min=1)
    keep_every: int = cfg_field(0, help="also keep every checkpoint whose step is a multiple of M (0 = none)", min=0)
    log_every: int = cfg_field(50, help="stats.jsonl line every N steps", min=1)
    sample_every: int = cfg_field(0, help="sample grid every N steps (0 = only at the end)", min=0)
    sample_per_class: int = cfg_field(4, help="grid images per class", min=0)
    sampling_steps: int = cfg_field(50, help="sampling steps (model evaluations) of the preview grids", min=1,
                                    was=("sample_steps",))
    num_workers: int = cfg_field(0, help="data-loader worker processes (0 = main process)", min=0)
    preload: bool = cfg_field(True, help="decode the whole training set into memory once")
    verify: bool = cfg_field(False, help="check every training image's SHA-1 against the manifest first (names changed files by CSV line)")
    log_with: str = cfg_field("", help=LOG_WITH_HELP, choices=TRACKERS)

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("--data MANIFEST is required (a manifest CSV, e.g. from gen/prepare.py split)")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pick one")
        if self.sampling_steps > self.diffusion.num_timesteps:
            raise ConfigError(f"sampling_steps {self.sampling_steps} exceeds diffusion.num_timesteps "
                              f"{self.diffusion.num_timesteps}")
        if self.timestep_sampler == "loss-aware" and not self.diffusion.learn_sigma:
            raise ConfigError("--timestep_sampler loss-aware importance-samples L_vlb, which a fixed-σ model "
                              "(diffusion.learn_sigma false) does not train; use uniform")
        check_tracker(self.log_with)



# ----------------------------------------------------------------------------------------------
# gen/sample.py

@dataclass
class SampleConfig:
    """`gen/sample.py`: which run and weights, how many images of which class, which sampler."""

    run: str = cfg_field("", help="diffusion run directory (from gen/train.py)")
    weights: str = cfg_field("ema", help="weights to sample with: the EMA or the raw model", choices=("ema", "model"),
                             was=("checkpoint",))
    step: int = cfg_field(0, help="checkpoint step (0 = latest kept)", min=0)
    per_class: int = cfg_field(0, help="images per class (balanced set)", min=0)
    counts: str = cfg_field("", help="explicit counts instead, e.g. A2C=500,PSAX=300")
    sampling_steps: int = cfg_field(100, help="sampling steps (model evaluations of the respaced chain)", min=1,
                                    was=("steps",))
    sampler: str = cfg_field("ddpm", choices=SAMPLERS,
                             help="ddpm (ancestral, learned variances), ddim, dpm++2m (DPM-Solver++ 2M), dpm++2m-sde (its stochastic form) or unipc; all but ddpm use ε only")
    eta: float = cfg_field(0.0, help="DDIM η (0 = deterministic)", min=0.0, max=1.0)
    guidance: float = cfg_field(1.0, help="classifier-free guidance scale w on ε (1 = conditional only)", min=0.0)
    spacing: str = cfg_field("linspace", help="which timesteps a short chain keeps", choices=("linspace", "leading"))
    seed: int = cfg_field(0, help="global seed; image i uses a seed derived from (seed, i)")
    batch_size: int = cfg_field(64, help="images per forward per process (also the shard size)", min=1)
    mixed_precision: str = cfg_field("auto", help=PRECISION_HELP, choices=PRECISIONS)
    compile: bool | str = cfg_field("auto", choices=COMPILE_CHOICES,
                                    help="torch.compile the UNet; auto = on CUDA, and on CPU for requests long enough to amortise it")
    out: str = cfg_field("", help="output directory")
    overwrite: bool = cfg_field(False, help="replace an existing output directory")

    def validate(self) -> None:
        if not self.run:
            raise ConfigError("--run RUN_DIR is required (a gen/train.py run directory)")
        if not self.out:
            raise ConfigError("--out DIR is required")
        if bool(self.per_class) == bool(self.counts):
            raise ConfigError("give exactly one of --per_class N or --counts CLASS=N,...")
        parse_counts(self.counts)


def parse_counts(text: str) -> dict[str, int]:
    """'A2C=500,PSAX=300' -> {'A2C': 500, 'PSAX': 300}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, num = part.partition("=")
        if not sep or not num.strip().isdigit():
            raise ConfigError(f"counts: {part!r} is not CLASS=N (e.g. --counts A2C=500,PSAX=300)")
        out[name.strip()] = int(num)
    return out
