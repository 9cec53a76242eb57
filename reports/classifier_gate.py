"""The classifier gate: did a classifier arm learn? The same rule as the synthetic-set gate, for the measuring stick.

An arm (one classifier run, all its seeds) "did not learn" on the findings split when

- the 95% interval of its balanced accuracy (reports/compare.py's bootstrap over images nested in
  seeds) includes chance, 1/K for the K classes of that split, or
- any seed gives one class to more than MAX_TOP_SHARE of the images (a collapsed classifier).

Every finding that rests on such an arm says so and is not evidence (reports/build.py). Computed from
the run's saved predictions, where the numbers are; an arm without predictions on the split is
"unverified" and nothing rests on it either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from echosynth.reports.compare import N_BOOT, findings_split, load_seed_predictions, metric_interval

MAX_TOP_SHARE = 0.9


def classifier_gate(run_dir: Path, eval_set: str | None = None, n_boot: int = N_BOOT) -> dict:
    """{"status": learned|did not learn|unverified, "eval_set", "balanced_accuracy", "ci", "chance",
    "top_share" (per seed), "reasons": [...], "summary"} of one classifier run."""
    eval_set = eval_set or findings_split(run_dir)
    preds = load_seed_predictions(run_dir, eval_set) if eval_set else []
    if not preds:
        where = eval_set or "a split that did not select its checkpoint"
        return {"status": "unverified", "eval_set": eval_set, "balanced_accuracy": None, "ci": None, "chance": None,
                "top_share": [], "reasons": [], "summary": f"no saved predictions on {where}"}
    k = len(set(preds[0].labels.tolist()))
    chance = 1.0 / k
    point, lo, hi, how = metric_interval(run_dir, eval_set, "balanced_accuracy", n_boot)
    shares = [float(np.bincount(p.pred, minlength=len(p.classes)).max() / len(p.pred)) for p in preds]
    reasons = []
    if lo is None or lo <= chance <= hi or hi < chance:
        reasons.append(f"balanced accuracy {point:.3f} (95% {_f(lo)} to {_f(hi)}) " +
                       ("has no interval" if lo is None else "includes chance" if lo <= chance <= hi else "is below chance")
                       + f" {chance:.3f}")
    collapsed = [i for i, s in enumerate(shares) if s > MAX_TOP_SHARE]
    if collapsed:
        reasons.append(f"{len(collapsed)} of {len(shares)} seeds give one class to more than {MAX_TOP_SHARE:.0%} of the "
                       f"images (largest share {max(shares):.0%})")
    summary = ("; ".join(reasons) if reasons else
               f"balanced accuracy {point:.3f} (95% {_f(lo)} to {_f(hi)}) above chance {chance:.3f}; no seed gives one "
               f"class to more than {MAX_TOP_SHARE:.0%} of the images (largest share {max(shares):.0%})")
    return {"status": "did not learn" if reasons else "learned", "eval_set": eval_set, "balanced_accuracy": point,
            "ci": [lo, hi], "chance": chance, "top_share": shares, "reasons": reasons, "how": how,
            "summary": f"{summary} ({how})"}


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"
