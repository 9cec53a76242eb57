"""Optional experiment tracking through accelerate's trackers (`--log_with tensorboard|wandb|mlflow`).

stats.jsonl stays the record the reports read; a tracker mirrors it for live dashboards. The
Accelerator needs `log_with` when it is built, before the run directory exists, so it gets the run
root as project directory and `start_trackers` points the logging directory at RUN/tracking/ once
the run is known (TensorBoard then writes RUN/tracking/<run name>/events.out.tfevents.*). On a
resumed run TensorBoard purges the events past the checkpoint's step, as stats.jsonl does.
Without `--log_with` every function here is a no-op.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

from echosynth.gen.core.config import ConfigError

TRACKERS = ("", "tensorboard", "wandb", "mlflow")
LOG_WITH_HELP = "also log to an experiment tracker: tensorboard (installed with the dev extra), wandb or mlflow (if installed)"


def check_tracker(log_with: str) -> None:
    """Refuse a tracker whose package is missing, with the command that installs it."""
    if log_with and importlib.util.find_spec(log_with) is None:
        raise ConfigError(f"--log_with {log_with}: the {log_with} package is not installed; install it with "
                          f"`.venv/bin/python -m pip install -c .venv/constraints.txt {log_with}`")


def accelerator_kwargs(log_with: str, root: str | os.PathLike) -> dict:
    """Keyword arguments for `Accelerator(...)`: none without a tracker."""
    return {"log_with": log_with, "project_dir": str(root)} if log_with else {}


def flat_config(config: dict, prefix: str = "") -> dict:
    """Nested config → {dotted key: bool/int/float/str} (what trackers accept as hyper-parameters)."""
    out: dict = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, f"{key}."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        elif v is None:
            out[key] = ""
        else:
            out[key] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return out


def start_trackers(accelerator, log_with: str, run: Path, config: dict, start_step: int = 0) -> None:
    """init_trackers(run name, flat config) logging under RUN/tracking/ (call on every process)."""
    if not log_with:
        return
    accelerator.project_configuration.logging_dir = str(Path(run) / "tracking")
    kwargs = {"tensorboard": {"purge_step": start_step}} if start_step else {}
    accelerator.init_trackers(Path(run).name, flat_config(config), init_kwargs=kwargs)


def log_metrics(accelerator, record: dict, prefix: str, step: int) -> None:
    """The finite numbers of a stats record as scalars `prefix/key` at `step` (main process)."""
    if not accelerator.trackers:
        return
    values = {f"{prefix}/{k}": float(v) for k, v in record.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and k not in ("step", "epoch", "time")}
    accelerator.log(values, step=step)


def log_image_file(accelerator, tag: str, path: str | os.PathLike, step: int) -> None:
    """A PNG written by the run (sample grid, confusion matrix) as an image at `step` (main process)."""
    if not accelerator.trackers or not accelerator.is_main_process:
        return
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        img = np.asarray(im.convert("RGB"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, img, global_step=step, dataformats="HWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            tracker.log_images({tag: [img]}, step=step)
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_image(img, f"{tag}/step-{step:07d}.png")


def log_text(accelerator, tag: str, text: str, step: int) -> None:
    """A text block (e.g. a confusion matrix table) at `step` (main process)."""
    if accelerator.trackers:
        accelerator.log({tag: text}, step=step)


def finish_trackers(accelerator) -> None:
    """Close the trackers (flushes TensorBoard's writer) without ending the process group."""
    if accelerator.is_main_process:
        for tracker in accelerator.trackers:
            tracker.finish()
    accelerator.trackers = []


def confusion_markdown(classes: list[str], confusion: list[list[int]]) -> str:
    """A confusion matrix (rows: true class, columns: predicted) as a Markdown table, which TensorBoard renders."""
    head = "| true \\ predicted | " + " | ".join(classes) + " |\n|" + "---|" * (len(classes) + 1) + "\n"
    return head + "".join(f"| {c} | " + " | ".join(str(v) for v in row) + " |\n" for c, row in zip(classes, confusion))
