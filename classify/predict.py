"""Classify new echo frames with a trained classifier: view, probabilities and (for a grader) the grade.

    classify/predict.py --model RUN[/seed-<s>] --images PATH [--out predictions.csv]

PATH is one image, a folder (searched recursively for .png/.jpg/.jpeg/.bmp/.tif) or a manifest
CSV (then its labels are kept and scored). Preprocessing is the training one: grayscale, bicubic
resize to the model's image size, scaling to [-1, 1]. Cone cropping of raw scanner frames is
`gen/prepare.py`'s job; feed prepared frames. Unreadable images (truncated, not an image,
over Pillow's size limit) are skipped and named on stderr; the rest are predicted.
"""

from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from echosynth.gen.core.config import ConfigError, field, parse_config
from echosynth.gen.core.io import atomic_path
from echosynth.gen.core.script import run_script, user_errors
from echosynth.gen.data.manifest import load_gray, read_manifest
from echosynth.gen.diffusion.settings import PRECISION_HELP, PRECISIONS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclasses.dataclass
class PredictConfig:
    """classify/predict.py settings."""

    model: str = field("", help="classifier run directory (RUN uses its first seed) or RUN/seed-<s>")
    images: str = field("", help="an image, a folder of images, or a manifest CSV")
    out: str = field("", help="predictions CSV to write (default: print a table)")
    which: str = field("best", choices=("best", "last"), help="checkpoint")
    batch: int = field(256, min=1, help="images per forward pass")
    device: str = field("auto", help="auto, cpu or cuda[:i]")
    mixed_precision: str = field("auto", choices=PRECISIONS, help=PRECISION_HELP)

    def validate(self) -> None:
        """Both inputs are required."""
        if not self.model or not self.images:
            raise ConfigError("--model RUN and --images PATH are required")


def list_images(path: str | Path) -> tuple[list[Path], pd.DataFrame | None]:
    """Image files of PATH (file, folder or manifest) and, for a manifest, its table."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        m = read_manifest(path)
        return [m.abspath(i) for i in range(len(m))], m.df
    if path.is_file():
        return [path], None
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files, None
    raise FileNotFoundError(f"{path}: no such image, folder or manifest")


def _try_load(path: Path, size: int) -> np.ndarray | str:
    """The image, or why it cannot be read (so one bad file does not stop a folder)."""
    try:
        return load_gray(path, size)
    except (OSError, ValueError) as e:  # truncated, not an image, a decompression bomb, ...
        return str(e) if str(e).startswith(str(path)) else f"{path}: {e}"


def predict_images(model, info: dict, files: list[Path], batch: int = 256, workers: int = 4,
                   skipped: list[str] | None = None, precision: str = "no") -> pd.DataFrame:
    """path, view, prob_<class>… (and grade) for image files, preprocessed as in training.

    Unreadable files are left out of the table; their reasons go to `skipped` if given (else
    the first one is raised as a ValueError). The model runs under `precision`'s autocast; probabilities are float32.
    """
    import torch

    from echosynth.gen.core.hardware import autocast

    size, classes = info["image_size"], info["classes"]
    device = next(model.parameters()).device
    grader = model.grade_head is not None
    with ThreadPoolExecutor(workers) as pool:
        loaded = list(pool.map(lambda p: _try_load(p, size), files))
    bad = [r for r in loaded if isinstance(r, str)]
    if bad and skipped is None:
        raise ValueError(bad[0])
    if skipped is not None:
        skipped.extend(bad)
    files = [f for f, r in zip(files, loaded) if not isinstance(r, str)]
    if not files:
        raise ValueError(f"none of the {len(loaded)} image(s) could be read; first: {bad[0]}")
    images = np.stack([r for r in loaded if not isinstance(r, str)])
    probs, grades = [], []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(images[s:s + batch]).to(device).unsqueeze(1).float().div(127.5).sub(1.0)
            with autocast(device, precision):
                logits, grade = model(x, with_grade=True) if grader else (model(x), None)
            probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
            if grade is not None:
                grades.append(grade.float().clamp(0, 10).cpu().numpy())
    p = np.concatenate(probs)
    df = pd.DataFrame({"path": [str(f) for f in files], "view": [classes[i] for i in p.argmax(1)]})
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = p[:, i]
    if grader:
        df["grade"] = np.concatenate(grades)
    return df


@user_errors("classify/predict.py", FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> None:
    """Load the model, classify the images, write or print the table."""
    cfg = parse_config(PredictConfig, argv, description=__doc__.split("\n")[0])
    import torch  # after parsing: --help and config errors answer without it

    from echosynth.classify.models import load_classifier
    from echosynth.gen.core.hardware import resolve_for

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model, info = load_classifier(cfg.model, cfg.which, device=device)
    files, table = list_images(cfg.images)
    skipped: list[str] = []
    df = predict_images(model, info, files, cfg.batch, skipped=skipped,
                        precision=resolve_for(cfg.mixed_precision, device)[0])
    for reason in skipped:
        print(f"classify/predict.py: skipped an unreadable image: {reason}", file=sys.stderr)
    if skipped:
        print(f"classify/predict.py: skipped {len(skipped)} of {len(files)} image(s); predicted the rest",
              file=sys.stderr)
    if table is not None:
        kept = pd.Series([str(f) for f in files]).isin(set(df["path"])).to_numpy()
        df.insert(1, "label", table["view"].to_numpy()[kept])
        known = df["label"].isin(info["classes"])
        acc = (df.loc[known, "label"] == df.loc[known, "view"]).mean() if known.any() else float("nan")
        print(f"accuracy on {known.sum()} labelled images: {acc:.4f}", file=sys.stderr)
    if cfg.out:
        with atomic_path(cfg.out) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
        print(f"wrote {len(df)} predictions to {cfg.out} (model {info['seed_dir']}, {info['arch']})", file=sys.stderr)
    else:
        with pd.option_context("display.width", 200, "display.max_rows", 50, "display.max_colwidth", 60):
            print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    run_script(main)
