"""The study config: one YAML that describes the data, the DDPMs, the classifiers and the grid.

Defaults here are the `quick` preset's shape at a smaller scale; `configs/study/*.yaml`
override them, and `--key value` flags override the file (dotted keys for nested sections,
e.g. `--ddpm.train.steps 50`).

Each stage's settings are a section typed by that stage's own config (`ddpm.train` is gen/train.py's
TrainConfig, `classify.train` classify/train.py's, `evaluate.fidelity` evaluate/fidelity.py's, ...),
so a typo is refused with its YAML path when the study loads. A section with a preset file starts
from it: defaults -> preset -> the study's keys. The keys the study sets for each stage (data,
run directories, seeds, ...) are the study's own (`OWNED`) and are refused in a section.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from echosynth.classify.settings import ARCHS, ClassifierTrainConfig
from echosynth.evaluate.embed import EmbedConfig
from echosynth.evaluate.fidelity import FidelityConfig
from echosynth.evaluate.gate import GateConfig
from echosynth.evaluate.privacy import PrivacyConfig
from echosynth.gen.core.config import ConfigError, apply_file, apply_overrides, field
from echosynth.gen.diffusion.settings import SampleConfig, TrainConfig

REPO = Path(__file__).resolve().parent.parent

# The judge's settings start from classify.train with these (a class-balanced sampler: the judge
# scores every class of a balanced synthetic set); evaluate.judge_train's keys win over them.
JUDGE_DEFAULTS = {"balance": "sampler"}

# Keys the study sets for each stage; a section that sets one is refused (the study's value would win).
_CLASSIFIER_OWNED = ("train", "val", "test", "run_dir", "arch", "seeds")
OWNED = {
    "ddpm.train": ("data", "run_dir", "mixed_precision", "resume"),
    "ddpm.sample": ("run", "out", "per_class", "mixed_precision"),
    "classify.train": _CLASSIFIER_OWNED,
    "evaluate.judge_train": _CLASSIFIER_OWNED,
    "experiments.quality_train": (*_CLASSIFIER_OWNED, "task"),
    "evaluate.fidelity": ("real", "holdout", "fake", "out", "classifier", "judge", "gate"),
    "evaluate.privacy": ("train", "holdout", "fake", "out", "filter", "classifier", "run"),
    "evaluate.embed": ("classifier", "real", "fake", "out"),
}


def repo_path(p: str) -> Path:
    """A config file path: absolute, relative to the working dir, or relative to the repo root."""
    path = Path(p)
    if path.is_absolute() or path.exists():
        return path.resolve()
    return REPO / path


def _section_keys(given: dict[str, Any], section: str) -> dict[str, Any]:
    """The keys `given` sets inside `section`, relative to it."""
    return {k[len(section) + 1:]: v for k, v in given.items() if k.startswith(section + ".")}


def _layered(base: Any, preset: str, given: dict[str, Any], section: str) -> Any:
    """A copy of `base` with the preset file's keys, then the study's keys for `section`, applied."""
    cfg = copy.deepcopy(base)
    if preset:
        apply_file(cfg, repo_path(preset))
    return apply_overrides(cfg, _section_keys(given, section), f"the study's {section}")


def _write_instead(section: str, key: str = "") -> Callable[[Any], str]:
    """For a retired study key: what to write instead, with the user's own values."""
    def advice(value: Any) -> str:
        if key:
            return f"write {section}: {{{key}: {value}}}"
        items = value.split(",") if isinstance(value, str) else list(value or [])
        pairs = ", ".join(f"{k.strip()}: {v.strip()}" for k, _, v in (str(i).partition("=") for i in items))
        return f"write {section}: {{{pairs or '...'}}} (the stage's own config keys, typed)"
    return advice


@dataclass
class DatasetConfig:
    manifest: str = field("", help="an existing manifest.csv to split; empty renders the phantom")
    split_dir: str = field("", help="an existing split dir (gen/prepare.py split output); skips data stages")
    phantom_n: int = field(1600, help="phantom: number of frames", min=16)
    image_size: int = field(32, help="phantom: image side in pixels", min=16, max=1024)
    subsets: list[int] = field(default_factory=lambda: [200, 400], help="real training subset sizes (nested)")
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1],
                                   help="train,val,test shares of the patients (a larger test share resolves smaller "
                                        "differences: the report's findings are computed on test)")
    holdout_sources: list[str] = field(default_factory=lambda: ["camus", "unity"],
                                       help="sources held out whole as the domain-shift test set")
    seed: int = field(0, help="seed for rendering and splitting")


@dataclass
class DDPMStageConfig:
    preset: str = field("configs/gen/tiny.yaml", help="gen/train.py config file that ddpm.train starts from")
    per_class: int = field(100, help="synthetic images per class (balanced set)", min=1)
    num_processes: int = field(1, help="accelerate processes for training and sampling", min=1)
    mixed_precision: str = field("auto", choices=("auto", "no", "bf16", "fp16"),
                                 help="precision of DDPM training and sampling (auto = bf16 where the hardware runs it natively)")
    threads: int = field(0, help="OMP/MKL threads of the training and sampling stages (0 = the study's threads); "
                                 "more than the other stages' when the DDPM is the study's critical path", min=0)
    train: TrainConfig = field(default_factory=TrainConfig)  # gen/train.py's settings (over the preset)
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(sampling_steps=25))  # gen/sample.py's settings


@dataclass
class ClassifyConfig:
    preset: str = field("", help="classify/train.py config file that classify.train starts from (empty: its defaults)")
    archs: list[str] = field(default_factory=lambda: ["vgg16"], choices=ARCHS, help="architectures, one classifier each")
    seeds: list[int] = field(default_factory=lambda: [0], help="classifier seeds (mean ± sd over them)")
    train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)  # every arm's settings (over the preset)


@dataclass
class EvaluateConfig:
    fidelity: FidelityConfig = field(default_factory=lambda: FidelityConfig(curve=False))  # evaluate/fidelity.py's
    privacy: PrivacyConfig = field(default_factory=lambda: PrivacyConfig(progress=False))  # evaluate/privacy.py's
    privacy_features: bool = field(True, help="privacy audit also in echo-feature space (largest real subset's classifier)")
    membership: bool = field(False, help="privacy audit also runs the membership-inference attack on each DDPM")
    embed: EmbedConfig = field(default_factory=lambda: EmbedConfig(progress=False))  # evaluate/embed.py's
    judge: bool = field(True, help="class fidelity: a judge classifier on the full real training split scores every synthetic set")
    judge_arch: str = field("", help="architecture of the judge (empty: the first of classify.archs); its penultimate "
                                     "features are the echo features of FID and the privacy audit")
    # The judge's settings: classify.train, then JUDGE_DEFAULTS, then these keys. When they come out equal to
    # classify.train and the largest subset is the full split, the real classifier is the judge.
    judge_train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)


@dataclass
class ExperimentsConfig:
    real: bool = field(True, help="1: classifiers on each real subset")
    synthetic: bool = field(True, help="2: DDPM per subset, sample, fidelity, privacy, synthetic-only classifiers")
    privacy_filter: bool = field(True, help="2: also train on the privacy-filtered synthetic set")
    mixing: list[float] = field(default_factory=lambda: [0.5, 1.0],
                                help="3: synthetic fractions (of the real subset size) added to real")
    upsampling: bool = field(True, help="4: upsample to the majority class and to the synthetic set size")
    smote: bool = field(True, help="4: SMOTE baseline")
    ablation: bool = field(False, help="5: variance × schedule ablation (learned/fixed σ × linear/cosine)")
    ablation_subset: int = field(0, help="5: subset for the ablation and curves (0 = the largest)", min=0)
    ablation_samples: list[int] = field(default_factory=lambda: [1000, 10000],
                                        help="5: the ablation table's two FID sample sizes (all classes)")
    sample_size: list[int] = field(default_factory=list, help="5: sample sizes (all classes) for FID vs sample size")
    training_time: list[int] = field(default_factory=list, help="5: checkpoint steps for FID vs training steps")
    final: bool = field(True, help="6: final model (largest subset + synthetic) on test and domain shift")
    final_fraction: float = field(0.5, help="6: synthetic fraction of the final model", min=0.0)
    embed: bool = field(True, help="7: feature maps (t-SNE of penultimate features)")
    quality: bool = field(False, help="7: image-quality grader (view + 0–10 grade, CACTUS)")
    quality_preset: str = field("configs/classify/cactus.yaml",
                                help="7: classify/train.py config file that quality_train starts from")
    quality_train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)  # 7: the grader's settings


SLURM_KINDS = ("ddpm_train", "sample", "classify", "evaluate", "data", "report")


@dataclass
class SlurmJobConfig:
    partition: str = field("", help="partition (-p); empty: the cluster's default")
    account: str = field("", help="account to charge (-A); empty: your default")
    qos: str = field("", help="quality of service (--qos); empty: the default")
    time: int = field(240, help="time limit in minutes (DDPM training and sampling checkpoint and requeue at it)", min=1)
    cpus: int = field(8, help="CPUs per node (--cpus-per-task: one launcher per node)", min=1)
    gpus: int = field(1, help="GPUs per node; DDPM training and sampling run one process per GPU", min=0)
    mem: str = field("32G", help="memory per node (--mem, e.g. 64G); empty: the cluster's default")
    nodes: int = field(1, help="nodes; more than 1 only for DDPM training and sampling (accelerate multi-node)", min=1)
    constraint: str = field("", help="node features (--constraint, e.g. a100)")
    extra: list[str] = field(default_factory=list, help="more sbatch flags, e.g. [--exclusive, --mail-type=END]")


@dataclass
class SlurmConfig:
    """Resources per stage kind and how the study talks to Slurm (used with --executor slurm)."""

    ddpm_train: SlurmJobConfig = field(default_factory=lambda: SlurmJobConfig(time=240, cpus=8, gpus=1, mem="64G"))
    sample: SlurmJobConfig = field(default_factory=lambda: SlurmJobConfig(time=240, cpus=8, gpus=1, mem="64G"))
    classify: SlurmJobConfig = field(default_factory=lambda: SlurmJobConfig(time=240, cpus=8, gpus=1, mem="32G"))
    evaluate: SlurmJobConfig = field(default_factory=lambda: SlurmJobConfig(time=120, cpus=8, gpus=1, mem="32G"))
    data: SlurmJobConfig = field(default_factory=lambda: SlurmJobConfig(time=120, cpus=8, gpus=0, mem="16G"))
    report: SlurmJobConfig = field(default_factory=lambda: SlurmJobConfig(time=30, cpus=2, gpus=0, mem="8G"))
    max_jobs: int = field(100, help="jobs of this study in the queue at once", min=1)
    poll_s: float = field(15.0, help="seconds between squeue calls", min=0.1)
    signal_s: int = field(120, help="seconds before the time limit that DDPM training and sampling are told to checkpoint",
                          min=10)
    max_requeue: int = field(20, help="time-limit requeues per job before it counts as failed", min=0)
    port: int = field(29500, help="multi-node DDPM: main process port (+ job ID % 1000, so jobs sharing a node differ)",
                      min=1024, max=64535)
    setup: list[str] = field(default_factory=list, help="shell lines each job runs first (module load ..., source .venv/bin/activate)")
    folder: str = field("", help="submitit's job files and Slurm logs (default STUDY/slurm); on the shared filesystem")
    check_nodes: bool = field(True, help="before submitting, check every request against the nodes sinfo lists and stop "
                              "naming each one no node can satisfy (a job pending for such a reason stops the study too)")


@dataclass
class StudyConfig:
    name: str = field("study", help="study name (report title)")
    out: str = field("", help="study directory (default runs/study-<name>)")
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    ddpm: DDPMStageConfig = field(default_factory=DDPMStageConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    report: bool = field(True, help="build report.html at the end")
    threads: int = field(0, help="OMP/MKL threads per stage (0 = the libraries' default); 1 on a shared busy CPU", min=0)
    jobs: int = field(0, help="stages run at once when their deps are done (0 = cores // max(threads, 1))", min=0)
    only: list[str] = field(default_factory=list, help="run only these stages (names, prefixes or experiments)")
    start: str = field("", help="run from this stage on (alias --from)")
    list_stages: bool = field(False, help="print the stage names and exit")
    executor: str = field("local", choices=("local", "slurm"), help="where stages run: local subprocesses or Slurm jobs")
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    status: bool = field(False, help="print each stage's state and job ID (Slurm: live from squeue) and exit")
    cancel_on_exit: bool = field(False, help="slurm: Ctrl-C or kill cancels the submitted jobs without asking")

    # Study keys that are gone, with what to write instead (gen.core.config refuses them with this advice).
    RETIRED: ClassVar[dict[str, Callable[[Any], str]]] = {
        "ddpm.train_args": _write_instead("ddpm.train"), "ddpm.sample_args": _write_instead("ddpm.sample"),
        "classify.train_args": _write_instead("classify.train"),
        "evaluate.fidelity_args": _write_instead("evaluate.fidelity"),
        "evaluate.privacy_args": _write_instead("evaluate.privacy"), "evaluate.embed_args": _write_instead("evaluate.embed"),
        "evaluate.judge_args": _write_instead("evaluate.judge_train"),
        "experiments.quality_args": _write_instead("experiments.quality_train"),
        "ddpm.steps": _write_instead("ddpm.train", "steps"), "ddpm.sample_steps": _write_instead("ddpm.sample", "sampling_steps"),
        "evaluate.fidelity_features": _write_instead("evaluate.fidelity", "features"),
    }

    def resolve(self, given: dict[str, Any]) -> None:
        """Layer each section over its preset (or, for the judge, over classify.train); refuse study-owned keys."""
        for section, owned in OWNED.items():
            for key in _section_keys(given, section):
                if key.split(".", 1)[0] in owned:
                    raise ConfigError(f"{section}.{key}: the study sets {key} for each stage; remove it from {section}")
        self.ddpm.train = _layered(TrainConfig(), self.ddpm.preset, given, "ddpm.train")
        self.classify.train = _layered(ClassifierTrainConfig(), self.classify.preset, given, "classify.train")
        judge = apply_overrides(copy.deepcopy(self.classify.train), JUDGE_DEFAULTS, "JUDGE_DEFAULTS")
        self.evaluate.judge_train = _layered(judge, "", given, "evaluate.judge_train")
        self.experiments.quality_train = _layered(ClassifierTrainConfig(), self.experiments.quality_preset, given,
                                                  "experiments.quality_train")

    def validate(self) -> None:
        if not self.dataset.subsets:
            raise ConfigError("dataset.subsets: give at least one real subset size")
        fr = self.dataset.fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise ConfigError(f"dataset.fractions: give three non-negative train,val,test shares summing to 1, got {fr}")
        if sorted(self.dataset.subsets) != list(self.dataset.subsets):
            raise ConfigError(f"dataset.subsets: list the sizes in increasing order, got {self.dataset.subsets}")
        for f in self.experiments.mixing:
            if not 0 < f <= 10:
                raise ConfigError(f"experiments.mixing: fraction {f} must be in (0, 10]")
        if self.experiments.ablation_subset and self.experiments.ablation_subset not in self.dataset.subsets:
            raise ConfigError(f"experiments.ablation_subset: {self.experiments.ablation_subset} is not one of "
                              f"dataset.subsets {self.dataset.subsets}")
        need = max(self.experiments.mixing + [self.experiments.final_fraction if self.experiments.final else 0])
        need_per_class = need * max(self.dataset.subsets) / 4  # mixed sets draw class-balanced synthetic images
        if not self.dataset.manifest and not self.dataset.split_dir and self.ddpm.per_class < need_per_class:
            raise ConfigError(f"ddpm.per_class {self.ddpm.per_class} is too small: mixing {need:g} × "
                              f"{max(self.dataset.subsets)} real images draws {need_per_class:g} synthetic per class "
                              "(4 phantom views); raise ddpm.per_class or lower the fractions")
        if "echo" in self.evaluate.fidelity.features and not self.experiments.real:
            raise ConfigError("evaluate.fidelity.features: 'echo' needs the real-subset classifiers (experiments.real)")
        if not self.classify.archs:
            raise ConfigError("classify.archs: give at least one classifier architecture")
