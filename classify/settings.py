"""The config of classify/train.py: torch-free, so `--help` and config errors answer in about a second.

The script imports torch, the image sets and the models only after parsing. The architecture names
and minimum sizes are echosynth.classify.models' registry, kept here without torch (tests/test_classify_models.py
checks they agree).
"""

from __future__ import annotations

import dataclasses

from echosynth.gen.core.config import ConfigError, field
from echosynth.gen.core.tracking import LOG_WITH_HELP, TRACKERS, check_tracker
from echosynth.gen.data import VIEWS
from echosynth.gen.diffusion.settings import PRECISION_HELP, PRECISIONS

SPEC_DOC = """\
SPEC grammar (`classify/train.py --train SPEC`; the study pipeline builds these strings):

    SPEC     := [KIND ":"] SOURCE ["@" ARG]
    SOURCE   := MANIFEST | MANIFEST "+" MANIFEST          (the second only for `mixed`)
    MANIFEST := path/to/file.csv ["#" key=value ("," key=value)*]   keys: split, subset

    real:M                 a real split or nested subset as is (a bare `M` means the same)
    synthetic:M[@N]        a synthetic manifest (source `synthetic`); @N keeps N per class
    mixed:R+S@F            real R plus round(F·|R|) synthetic images from S, drawn class-balanced
    upsampled:M[@majority|@N]  random oversampling of every class to the majority count / N
    smote:M[@majority|@N]  SMOTE on flattened pixels (imbalanced-learn) to the majority count / N

Examples: `real:split/train_1000.csv`, `real:split/manifest.csv#split=train,subset=1000`,
`mixed:split/train_1000.csv+samples/manifest.csv@0.3`, `upsampled:split/train_1000.csv@8000`.
Oversampling never drops images: a class already above N keeps all of its images.
"""

ARCHS = ("vgg16", "vgg16_bn", "resnet18", "densenet121", "mobilenet_v2", "madani", "small_cnn", "inception_v3", "inception_v3_aux",
         "fid_inception_frozen", "fid_inception_frozen_mlp")
# Frozen ImageNet features (the offline FID Inception) under a trained head: classify/frozen_features.py
FROZEN_BACKBONES = ("fid_inception_frozen", "fid_inception_frozen_mlp")
MIN_IMAGE_SIZE = 32


def inception_grid_sizes(size: int) -> tuple[int, int, int]:
    """Side of InceptionV3's 35×35, 17×17 and 8×8 grids (their sizes at 299 px) for a size-px input."""
    def valid(n: int, k: int = 3, s: int = 1) -> int:  # an unpadded conv or pool
        return (n - k) // s + 1

    n = valid(valid(size, 3, 2))   # Conv2d_1a (stride 2), Conv2d_2a; Conv2d_2b is padded
    n = valid(valid(n, 3, 2))      # max pool, Conv2d_4a (Conv2d_3b is 1×1)
    g35 = valid(n, 3, 2)           # max pool
    g17 = valid(g35, 3, 2)         # Mixed_6a
    return g35, g17, valid(g17, 3, 2)  # Mixed_7a


def inception_min_size(aux: bool) -> int:
    """Smallest input side that every layer fits: 75 px (8×8 grid ≥ 1), 107 px with the aux head (17×17 grid ≥ 5)."""
    size = 1
    while not (inception_grid_sizes(size)[2] >= 1 and (not aux or inception_grid_sizes(size)[1] >= 5)):
        size += 1
    return size


# Architectures that need more than MIN_IMAGE_SIZE px (every unpadded layer must fit).
MIN_SIZES = {"inception_v3": inception_min_size(False), "inception_v3_aux": inception_min_size(True)}


def min_image_size(arch: str) -> int:
    """Smallest image_size an architecture accepts."""
    return MIN_SIZES.get(arch, MIN_IMAGE_SIZE)


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
    arch: str = field("vgg16", choices=ARCHS, help="architecture")
    image_size: int = field(112, min=32, help="images are resized to image_size × image_size")
    epochs: int = field(25, min=1, help="training epochs (when --steps is 0)")
    steps: int = field(0, min=0, help="optimizer-step budget: every training set gets exactly this many steps whatever "
                                      "its size, so arms compare data, not step counts (0: --epochs passes instead)")
    eval_every: int = field(0, min=0, help="with --steps: optimizer steps between validation scores and checkpoints "
                                           "(0: one pass over the training set); without --steps every epoch is scored")
    precise_bn: int = field(0, min=0, help="before each validation: recompute BatchNorm running statistics over up to "
                                           "this many training images (0: off; running averages lag fast-moving weights)")
    checkpoint: str = field("best", choices=("best", "last"),
                            help="checkpoint scored on every evaluation set: best on --val by select_metric, or the last "
                                 "(then --val selects nothing and is a fair evaluation set too)")
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
    mixed_precision: str = field("auto", choices=PRECISIONS, help=PRECISION_HELP)
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
