"""Refuse to run beside Hugging Face's `evaluate` distribution, whose top-level name we share.

echosynth's top-level package `evaluate` (fidelity, privacy, embeddings, survey) has the same
import name as Hugging Face's `evaluate`. Installed into one environment, one silently shadows
or overwrites the other, so we fail loudly instead and say what to do.
"""

from __future__ import annotations

import importlib.metadata


def check_evaluate_name_clash() -> None:
    """Raise ImportError if a distribution other than echosynth provides `evaluate`."""
    try:
        dist = importlib.metadata.distribution("evaluate")
    except importlib.metadata.PackageNotFoundError:
        return
    raise ImportError(
        f"Hugging Face's 'evaluate' {dist.version} is installed in this environment "
        f"({dist.locate_file('')}), and echosynth's package 'evaluate' has the same import name: "
        "one would shadow or overwrite the other. Install echosynth in its own environment "
        "(`make venv` creates .venv), or `pip uninstall evaluate` here."
    )
